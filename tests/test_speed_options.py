"""Speed options change memory or speed, never results: remat, FSDP sharding, one compile each."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jldm import api
from jldm.build import unet_state_shapes
from jldm.build.model import build_model, init_params
from jldm.build.objectives import build_loss
from jldm.build.state import create_state, make_optimizer
from jldm.runs import checkpoint
from jldm.train import diffusion as diffusion_task
from jldm.train.sharding import batch_sharding, leaf_spec, make_mesh, state_sharding
from jldm.train.step import make_train_step, make_update
from tests.tiny import tiny_config

# One level keeps compiles short; 32 channels make the up block's first kernel (3x3x64x32)
# big enough to be split by FSDP.
SMALL = {"model.channels": 32, "model.norm_groups": 8, "model.channel_mult": (1,)}
SPLIT = PartitionSpec(None, None, "data")
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def _params(config, model):
    """Random params from numpy: no init program to compile."""
    shapes = jax.eval_shape(lambda k: init_params(model, config, k), jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    return jax.tree_util.tree_map(
        lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), shapes
    )


def _batch(n: int = 8, res: int = 8) -> dict:
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    return {
        "image": jax.random.uniform(k1, (n, res, res, 1), minval=-1, maxval=1),
        "label": jax.random.randint(k2, (n,), 0, 10),
    }


def _leaves_close(a, b, rtol, atol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def _kernel(params):
    return params["unet"]["up_blocks_0"]["resnets_0"]["conv1"]["kernel"]


def test_remat_keeps_the_parameter_tree_loss_and_gradients(data_dir):
    # Dropout on: the recomputed forward must redraw the masks of the first one.
    plain_cfg = tiny_config(data_dir, **SMALL, **{"model.dropout": 0.2})
    remat_cfg = tiny_config(data_dir, **SMALL, **{"model.dropout": 0.2, "model.remat": True})
    plain, remat = build_model(plain_cfg), build_model(remat_cfg)
    key = jax.random.PRNGKey(0)
    tree = lambda m, c: jax.tree_util.tree_flatten_with_path(
        jax.eval_shape(lambda k: init_params(m, c, k), key)
    )[0]
    paths = {jax.tree_util.keystr(p): (v.shape, v.dtype) for p, v in tree(plain, plain_cfg)}
    assert any("attentions_0" in p for p in paths)  # the mid block's transformer is in play
    assert paths == {jax.tree_util.keystr(p): (v.shape, v.dtype) for p, v in tree(remat, remat_cfg)}

    params, batch, rng = _params(plain_cfg, plain), _batch(), jax.random.PRNGKey(2)

    def loss_and_grads(config, model):
        fn = jax.jit(jax.value_and_grad(build_loss(config, model), has_aux=True))
        # Unoptimised machine code compiles about 3x faster; both sides get the same.
        compiled = fn.lower(params, rng, batch).compile(compiler_options=FAST_COMPILE)
        (loss, _), grads = compiled(params, rng, batch)
        return float(loss), grads

    loss_p, g_p = loss_and_grads(plain_cfg, plain)
    loss_r, g_r = loss_and_grads(remat_cfg, remat)
    assert loss_p > 0
    np.testing.assert_allclose(loss_r, loss_p, rtol=1e-6)
    _leaves_close(g_r, g_p, rtol=1e-5, atol=1e-7)


def test_leaf_spec_splits_the_largest_divisible_axis_and_keeps_small_leaves_whole():
    assert leaf_spec((3, 3, 128, 64), 4) == SPLIT
    assert leaf_spec((3, 3, 130, 64), 4) == PartitionSpec(None, None, None, "data")
    assert leaf_spec((64,), 4) == PartitionSpec()  # below the size threshold
    assert leaf_spec((130, 131), 4, min_size=1) == PartitionSpec()  # nothing divides
    assert leaf_spec((3, 3, 128, 64), 1) == PartitionSpec()


def _mlp_loss(params, rng, batch):
    """A two-layer regression loss: FSDP is the same for any model, and this one compiles fast."""
    h = jnp.tanh(batch["x"] @ params["w1"] + params["b1"])
    err = h @ params["w2"] - batch["y"]
    loss = jnp.mean(err**2) + 0.0 * jax.random.uniform(rng)
    return loss, {"loss": loss}


def _three_steps(params, shard: bool):
    config = tiny_config("unused")
    mesh = make_mesh()
    tx = make_optimizer(config.train)
    shapes = jax.eval_shape(lambda: create_state(lambda k: params, tx, 0))
    shardings = state_sharding(shapes, mesh, shard)
    init = jax.jit(lambda: create_state(lambda k: params, tx, 0), out_shardings=shardings)
    step = make_train_step(
        make_update(_mlp_loss, tx, 0.9, False, shardings.params), mesh, shardings
    )
    rng = np.random.default_rng(1)
    batch = {"x": rng.standard_normal((1, 8, 64)), "y": rng.standard_normal((1, 8, 64))}
    batch = jax.device_put(jax.tree_util.tree_map(np.float32, batch), batch_sharding(mesh, 1))
    state, losses = init(), []
    for _ in range(3):  # the first step has learning rate 0 (warmup starts at 0)
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"][0]))
    return state, losses, shardings


def test_fsdp_step_matches_the_replicated_step_and_checkpoints_split(tmp_path):
    assert jax.device_count() == 4
    rng = np.random.default_rng(0)
    shapes = {"w1": (64, 512), "b1": (512,), "w2": (512, 64)}
    params = {k: (0.1 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}
    rep, loss_rep, _ = _three_steps(params, shard=False)
    fsdp, loss_fsdp, shardings = _three_steps(params, shard=True)
    assert loss_rep[2] < loss_rep[0]
    np.testing.assert_allclose(loss_fsdp, loss_rep, rtol=1e-6)
    _leaves_close(fsdp, rep, rtol=1e-5, atol=1e-7)
    assert np.abs(np.asarray(fsdp.params["w1"]) - params["w1"]).max() > 1e-4  # a real update

    # w1 splits its 512 columns, w2 its 512 rows; b1 (512 floats) stays whole.
    assert fsdp.params["w1"].sharding.spec == PartitionSpec(None, "data")
    assert fsdp.params["w2"].sharding.spec == PartitionSpec("data")
    assert {s.data.shape for s in fsdp.params["w1"].addressable_shards} == {(64, 128)}
    assert fsdp.opt_state[1][0].nu["w1"].sharding.spec == PartitionSpec(None, "data")
    assert fsdp.ema_params["w2"].sharding.spec == PartitionSpec("data")
    assert fsdp.params["b1"].sharding.spec == PartitionSpec()

    d0 = jax.devices()[0]
    on_d0 = lambda tree: sum(
        s.data.nbytes
        for x in jax.tree_util.tree_leaves(tree)
        for s in x.addressable_shards
        if s.device == d0
    )
    split = lambda x: x.sharding.spec != PartitionSpec()
    expected = sum(x.nbytes // (4 if split(x) else 1) for x in jax.tree_util.tree_leaves(fsdp))
    assert on_d0(fsdp) == expected < 0.3 * on_d0(rep)

    mngr = checkpoint.manager(str(tmp_path / "w"))
    checkpoint.save(mngr, fsdp, {"step": 3})
    mngr.wait_until_finished()
    abstract = jax.tree_util.tree_map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), fsdp, shardings
    )
    back, meta = checkpoint.restore(mngr, abstract, 3)
    assert meta["step"] == 3 and back.params["w1"].sharding == fsdp.params["w1"].sharding
    _leaves_close(back, fsdp, rtol=0, atol=0)


def test_fsdp_training_resumes_and_compiles_the_step_and_sampler_once(
    data_dir, tmp_path, monkeypatch
):
    traces: list[int] = []
    real = diffusion_task.build_loss

    def counted(config, model):
        loss_fn = real(config, model)

        def traced(params, rng, batch):
            traces.append(1)  # runs once per trace of the train step, i.e. once per compile
            return loss_fn(params, rng, batch)

        return traced

    monkeypatch.setattr(diffusion_task, "build_loss", counted)
    sharded = lambda **o: tiny_config(data_dir, **SMALL, **{"train.shard_params": True, **o})
    workdir = str(tmp_path / "fsdp")
    assert api.train(sharded(**{"train.steps": 2}), workdir)
    assert len(traces) == 1
    assert api.train(sharded(**{"train.steps": 4}), workdir)  # steps 3-4 from the step-2 restore
    assert len(traces) == 2

    config = sharded()
    shapes = unet_state_shapes(config, build_model(config))
    abstract = jax.tree_util.tree_map(
        lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
        shapes,
        state_sharding(shapes, make_mesh(), True),
    )
    state, meta = checkpoint.restore(checkpoint.manager(workdir, read_only=True), abstract)
    assert int(state.step) == meta["data_step"] == 4
    assert _kernel(state.params).sharding.spec == SPLIT

    loaded = api.load(workdir)
    model = loaded.model

    class Counting:
        """The model with a counter of apply calls, i.e. of traces under jit."""

        calls = 0

        def apply(self, *args, **kwargs):
            Counting.calls += 1
            return model.apply(*args, **kwargs)

        def __getattr__(self, name):  # the model's fields (its unet's shape for the memory check)
            return getattr(model, name)

    s = config.sample  # the final grid's request, so its compiled sampler may be reused
    go = api.make_generator(
        loaded._replace(model=Counting()),
        np.arange(10),
        sampler=s.sampler,
        steps=s.steps,
        guidance=s.guidance,
        eta=s.eta,
    )
    a = go(jax.random.PRNGKey(0))
    b = go(jax.random.PRNGKey(1))
    assert Counting.calls == 1  # the scan body traced once, for both calls
    assert go.fn._cache_size() == 1
    assert not jnp.allclose(a, b)  # the second call did run, with its own noise
