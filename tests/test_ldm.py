"""Latent diffusion end to end on a tiny config: stage 1, stage 2 on scaled latents, text
prompts through sample.py, and inpainting that keeps the known pixels."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import digits_ldm
from jldm import api
from jldm.api import train as run
from jldm.errors import UserError
from jldm.sampling.run import encode
from jldm.train.inputs import load_training_images
from tests.clitools import cli
from tests.tiny import TINY_FLAGS, apply_overrides


def tiny_ldm(data_dir: str):
    c = digits_ldm.get_config()
    c.data.data_dir = data_dir
    apply_overrides(c, TINY_FLAGS)
    c.data.resolution = 8
    c.model.attention_levels = (0,)  # one level (TINY_FLAGS): cross-attention at the latents
    c.text.width, c.text.layers, c.text.heads = 16, 2, 2
    a = c.stage1
    a.channels, a.channel_mult, a.norm_groups, a.latent_channels = 8, (1, 2), 4, 2
    a.steps, a.batch_size, a.perceptual_steps, a.disc_start, a.disc_layers = 4, 8, 2, 2, 1
    a.checkpoint_every, a.log_every = 2, 2
    return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm")
    config = tiny_ldm(str(root / "tfds"))
    workdir = str(root / "run")
    assert run(config, workdir)
    return config, workdir


def test_both_stages_checkpoint_and_the_scale_makes_latents_unit_std(trained):
    config, workdir = trained
    assert sorted(os.listdir(os.path.join(workdir, "stage1", "checkpoints"))) == ["2", "4"]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    loaded = api.load(workdir)
    scale = loaded.stage1.scale
    images, _ = load_training_images(config)
    latents = encode(loaded.stage1, images)
    assert latents.shape[1:] == (4, 4, 2)
    assert abs(float(np.std(latents * scale)) - 1.0) < 1e-3
    # Stage 2 trained on the set encoded once into WORKDIR/latents, whose scale it keeps.
    with open(os.path.join(workdir, "latents", "done.json")) as f:
        done = json.load(f)
    assert done["scale"] == scale and done["count"] == len(images)
    assert done["source"]["stage1_step"] == 4 and done["shape"] == [4, 4, 2]


def test_sample_py_draws_an_image_for_a_prompt(trained, tmp_path):
    _, workdir = trained
    out = str(tmp_path / "three")
    proc = cli(
        "sample.py",
        "--workdir",
        workdir,
        "--prompt",
        "a handwritten digit three",
        "--num",
        "2",
        "--out",
        out,
        "--steps",
        "2",
        "--nometrics",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out + ".npz") as f:
        assert f["images"].shape == (2, 8, 8, 1)
        assert np.isfinite(f["images"]).all()
    assert os.path.isfile(out + ".png")


def test_prompts_change_the_samples_and_class_runs_refuse_them(trained):
    _, workdir = trained
    loaded = api.load(workdir)
    a = api.generate(loaded, prompts=["a handwritten digit three"], steps=2, guidance=3.0)
    b = api.generate(loaded, prompts=["a handwritten digit seven"], steps=2, guidance=3.0)
    assert a.shape == (1, 8, 8, 1) and np.abs(a - b).max() > 1e-4


def test_super_resolution_run_sharpens_given_low_res_images(tmp_path):
    from jldm.build.model import downsample
    from tests.tiny import tiny_config

    x = np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1)
    low = np.asarray(downsample(jnp.asarray(x), 4))
    np.testing.assert_allclose(low[1, 1, 0, 0], x[1, 4:8, 0:4, 0].mean())

    config = tiny_config(str(tmp_path / "tfds"), **{"model.low_res_factor": 4})
    workdir = str(tmp_path / "sr")
    assert run(config, workdir)
    loaded = api.load(workdir)
    low = np.zeros((2, 2, 2, 1), np.float32)
    y = api.generate(loaded, labels=[1, 2], steps=2, low_res=low)
    assert y.shape == (2, 8, 8, 1) and np.isfinite(y).all()
    with pytest.raises(UserError, match="low-resolution images of shape"):
        api.generate(loaded, labels=[1, 2], steps=2, low_res=low[:, :1])


def test_compare_reports_both_stages_training_speed_and_prompted_accuracy(trained):
    from jldm import compare

    config, workdir = trained
    row = compare.compare_one(workdir, 4, 1, 2.0, 0, 0)
    assert row["train_steps_s"] > 0 and row["stage1_steps_s"] > 0
    assert row["images_s"] == pytest.approx(row["num_samples"] / row["sample_s"])
    assert 0 <= row["class_accuracy"] <= 1 and row["bits_per_dim"] is None
    # The stage-1 error on the test split, recomputed here from the autoencoder itself.
    from jldm.data import dataset_of, load_split, preprocess

    test = load_split(dataset_of(config.data), "test")
    x = np.asarray(preprocess(test.images[:500], config.data.resolution), np.float32)
    ae, params, _ = api.load(workdir).stage1
    recon = np.asarray(ae.apply({"params": params}, x)[0])
    assert row["ae_images"] == len(x)
    assert row["ae_mse"] == pytest.approx(float(np.mean((recon - x) ** 2)), rel=1e-4)
    assert row["ae_psnr"] == pytest.approx(10 * np.log10(4 / row["ae_mse"]))
