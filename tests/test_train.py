"""Training: sharded == single device, and a stopped-and-resumed run == an uninterrupted one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jldm import api
from jldm.train import checkpoint, loop
from jldm.train.factory import build_loss, build_model
from jldm.train.loop import run
from jldm.train.sharding import batch_sharding, make_mesh, replicated
from tests.tiny import tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


def test_four_device_mesh_gives_the_loss_and_gradients_of_one_device(data_dir):
    assert jax.device_count() == 4
    config = tiny_config(data_dir)
    model = build_model(config)
    loss_fn = build_loss(config, model)
    params = jax.jit(lambda k: api.init_params(model, config, k))(jax.random.PRNGKey(0))
    k1, k2 = jax.random.split(jax.random.PRNGKey(1))
    batch = {
        "image": jax.random.uniform(k1, (8, 8, 8, 1), minval=-1, maxval=1),
        "label": jax.random.randint(k2, (8,), 0, 10),
    }
    rng = jax.random.PRNGKey(2)

    def grads_on(devices):
        mesh = make_mesh(devices)
        fn = jax.jit(
            jax.value_and_grad(loss_fn, has_aux=True),
            in_shardings=(replicated(mesh), replicated(mesh), batch_sharding(mesh)),
        )
        placed = jax.device_put(batch, batch_sharding(mesh))
        (loss, _), grads = fn(params, rng, placed)
        return float(loss), grads, placed

    loss1, g1, _ = grads_on(jax.devices()[:1])
    loss4, g4, placed = grads_on(jax.devices())
    assert placed["image"].sharding == NamedSharding(make_mesh(), PartitionSpec("data"))
    assert len(placed["image"].addressable_shards) == 4
    np.testing.assert_allclose(loss4, loss1, rtol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g4), jax.tree_util.tree_leaves(g1), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def _final_state(workdir, config):
    model = build_model(config)
    state, meta = checkpoint.restore(
        checkpoint.manager(workdir, read_only=True), api.abstract_state(config, model)
    )
    return state, meta


def test_resumed_run_reaches_the_uninterrupted_params(data_dir, tmp_path):
    config = tiny_config(data_dir)
    run(config, str(tmp_path / "straight"))

    half = tiny_config(data_dir, **{"train.steps": 2})
    run(half, str(tmp_path / "resumed"))
    stopped, _ = _final_state(str(tmp_path / "resumed"), half)
    assert int(stopped.step) == 2
    run(config, str(tmp_path / "resumed"))  # picks up the step-2 checkpoint

    a, meta = _final_state(str(tmp_path / "straight"), config)
    b, _ = _final_state(str(tmp_path / "resumed"), config)
    assert int(a.step) == int(b.step) == 4 and meta["data_step"] == 4
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)
    moved = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda p, q: jnp.abs(p - q).max(), a.params, stopped.params)
    )
    assert max(float(m) for m in moved) > 0  # steps 3-4 did change the params


def test_training_lowers_the_loss(data_dir, tmp_path):
    config = tiny_config(
        data_dir,
        **{
            "train.steps": 40,
            "train.lr": 3e-3,
            "train.checkpoint_every": 40,
            "train.log_every": 10,
        },
    )
    run(config, str(tmp_path / "w"))
    import json

    lines = [json.loads(s) for s in open(tmp_path / "w" / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [10, 20, 30, 40]
    assert lines[-1]["loss"] < 0.6 * lines[0]["loss"]


def test_nan_step_stops_keeping_the_last_good_checkpoint_or_is_skipped(
    data_dir, tmp_path, monkeypatch
):
    workdir = str(tmp_path / "w")
    run(tiny_config(data_dir, **{"train.steps": 2}), workdir)
    good, _ = _final_state(workdir, tiny_config(data_dir))
    real = loop.build_loss

    def poisoned(config, model):
        loss_fn = real(config, model)

        def nan_loss(params, rng, batch):
            loss, metrics = loss_fn(params, rng, batch)
            return loss * jnp.nan, dict(metrics, loss=loss * jnp.nan)

        return nan_loss

    monkeypatch.setattr(loop, "build_loss", poisoned)
    with pytest.raises(loop.TrainingDiverged, match=r"step 3; the last good checkpoint \(step 2\)"):
        run(tiny_config(data_dir), workdir)
    assert checkpoint.manager(workdir, read_only=True).all_steps() == [2]

    skipping = tiny_config(data_dir, **{"train.skip_nonfinite": True})
    assert run(skipping, workdir)
    after, _ = _final_state(workdir, skipping)
    assert int(after.step) == 4
    for x, y in zip(
        jax.tree_util.tree_leaves(after.params), jax.tree_util.tree_leaves(good.params), strict=True
    ):
        np.testing.assert_array_equal(x, y)
    import json

    last = [json.loads(s) for s in open(tmp_path / "w" / "metrics.jsonl")][-1]
    assert last["skipped_steps"] == 2
