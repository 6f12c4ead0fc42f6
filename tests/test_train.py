"""Training: sharded == single device, and the loss goes down (resume and NaN: test_fit.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jldm.api import train as run
from jldm.build.model import build_model, init_params
from jldm.build.objectives import build_loss
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
    params = jax.jit(lambda k: init_params(model, config, k))(jax.random.PRNGKey(0))
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


def test_training_lowers_the_loss(data_dir, tmp_path):
    config = tiny_config(
        data_dir,
        **{
            "train.steps": 40,
            "train.lr": 3e-3,
            "model.channel_mult": (1, 2),
            "train.checkpoint_every": 40,
            "train.log_every": 10,
        },
    )
    run(config, str(tmp_path / "w"))
    import json

    lines = [json.loads(s) for s in open(tmp_path / "w" / "metrics.jsonl")]
    assert [r["step"] for r in lines] == [10, 20, 30, 40]
    assert lines[-1]["loss"] < 0.6 * lines[0]["loss"]
