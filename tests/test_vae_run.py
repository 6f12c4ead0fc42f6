"""The VAE as a generative model: a tiny run trains through train(), loads, samples its prior,
encodes and decodes, writes sample.py's outputs and compare's row; its bits/dim follow the
diffusion runs' dequantisation convention, checked against closed forms."""

import json
import logging
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs import digits_vae
from jldm import api
from jldm.build.vae import MIN_LOGVAR, build_vae, init_vae
from jldm.diffusion.likelihood import bits_per_dim
from jldm.errors import UserError
from jldm.runs.load import Loaded
from jldm.sampling.vae import sample_vae_run
from jldm.sampling.vae_likelihood import eval_pixels, vae_bits_per_dim
from tests.tiny import apply_overrides

TINY = {
    "data.resolution": 8,
    "model.latent_size": 4,
    "model.channels": 4,
    "model.channel_mult": (1,),
    "model.hidden": 16,
    "vae.kl_warmup_steps": 2,
    "vae.iwae_samples": 4,
    "vae.eval_images": 8,
    "train.batch_size": 8,
    "train.steps": 4,
    "train.warmup_steps": 2,
    "train.checkpoint_every": 2,
    "train.log_every": 2,
    "sample.per_class": 1,
    "sample.interpolation_rows": 2,
    "sample.interpolation_steps": 3,
}


def tiny_vae(data_dir: str, **overrides):
    """The digits VAE at 8x8 with a few hundred parameters, reading data_dir."""
    c = digits_vae.get_config()
    c.data.data_dir = data_dir
    return apply_overrides(c, {**TINY, **overrides})


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("vae_data"))


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    config = tiny_vae(data_dir)
    workdir = str(tmp_path_factory.mktemp("vae") / "run")
    assert api.train(config, workdir)
    return config, workdir


def test_a_vae_config_trains_through_train_and_logs_its_test_bits_per_dim(trained):
    _, workdir = trained
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    evals = [r["test_elbo_bpd"] for r in rows if "test_elbo_bpd" in r]
    assert len(evals) == 3 and all(8.0 < b < 30.0 for b in evals)  # 8 bits: the bin width
    trained_rows = [r for r in rows if "kl_weight" in r]
    assert [r["kl_weight"] for r in trained_rows] == [0.5, 1.0]  # warm-up over 2 steps: 1/2, 1
    assert os.path.isfile(os.path.join(workdir, "samples_final.png"))


def test_prior_samples_are_decodes_of_standard_normal_draws(trained):
    _, workdir = trained
    run = api.load(workdir)
    assert run.step == 4 and run.schedule is None
    labels = np.array([0, 3, 9, 9])
    x = api.generate(run, labels=labels, seed=5)
    assert x.shape == (4, 8, 8, 1) and x.min() >= 0.0 and x.max() <= 1.0
    z = jax.random.normal(jax.random.PRNGKey(5), (4, 4))
    np.testing.assert_allclose(x, api.decode(run, np.asarray(z), labels=labels), atol=1e-6)
    hot = api.generate(run, labels=labels, seed=5, temperature=2.0)
    np.testing.assert_allclose(hot, api.decode(run, 2 * np.asarray(z), labels=labels), atol=1e-6)
    assert api.generate(run, labels=labels, seed=5, uint8=True).dtype == np.uint8
    with pytest.raises(UserError, match="class-conditional: pass labels"):
        api.generate(run, num=3)
    with pytest.raises(UserError, match="drop"):
        api.make_generator(run, labels, sampler="ddim")


def test_encode_gives_the_posterior_mean_and_decode_inverts_nothing_else(trained):
    _, workdir = trained
    run = api.load(workdir)
    pixels, labels = eval_pixels(run.config, 6)
    x = pixels.astype(np.float32) / 255.0
    z = api.encode(run, x, labels=labels)
    model = run.model
    mean, _ = model.apply({"params": run.params}, jnp.asarray(x), labels, method=model.encode)
    np.testing.assert_allclose(z, np.asarray(mean), atol=1e-6)
    recon = api.decode(run, z, labels=labels)
    out = model.apply({"params": run.params}, jnp.asarray(z), labels, method=model.decode)
    np.testing.assert_allclose(recon, np.clip(np.asarray(out[..., :1]), 0, 1), atol=1e-6)
    with pytest.raises(UserError, match="latent_size"):
        api.decode(run, np.zeros((2, 5)), labels=[0, 1])


def test_bits_per_dim_bound_the_same_way_and_iwae_is_the_tighter(trained):
    _, workdir = trained
    run = api.load(workdir)
    pixels, labels = eval_pixels(run.config, 8)
    out = vae_bits_per_dim(run, pixels, samples=4)
    assert out["data"] == "8-bit" and out["decoder_evals"] == 4 * 10
    assert np.all(out["iwae"] <= out["elbo"] + 1e-5)  # same draws: log of a mean >= mean of logs
    given = vae_bits_per_dim(run, pixels, labels=labels, samples=4)
    assert given["decoder_evals"] == 4
    bpd, nfe = api.bits_per_dim(run, pixels, samples=4, with_nfe=True)
    np.testing.assert_allclose(bpd, out["iwae"], rtol=1e-6)
    assert np.all(nfe == 40)


def _constant_run(config) -> Loaded:
    """A VAE whose networks are zero but for the decoder's output bias: q(z|x) = N(0, I) = p(z)
    and the decoder's output is that bias whatever z, so log p(x) has a closed form."""
    model = build_vae(config)
    params = jax.tree_util.tree_map(jnp.zeros_like, init_vae(model, config, jax.random.PRNGKey(0)))
    bias = {"gaussian": [0.3, math.log(0.2**2)], "bernoulli": [-0.4]}[config.model.likelihood]
    params["conv_out"]["bias"] = jnp.asarray(bias, jnp.float32)
    return Loaded(config, model, params, None, 0)


@pytest.mark.parametrize("conditioning", ["class", "none"])
def test_gaussian_bits_per_dim_match_the_closed_form_of_dequantised_pixels(data_dir, conditioning):
    # An unconditional VAE has no class prior to learn.
    prior = "class" if conditioning == "class" else "standard"
    run = _constant_run(
        tiny_vae(data_dir, **{"model.conditioning": conditioning, "model.prior": prior})
    )
    pixels, _ = eval_pixels(run.config, 128)
    got = vae_bits_per_dim(run, pixels, samples=2, seed=1)
    # A conditional VAE's p(x) averages its classes' (here equal) likelihoods.
    assert got["decoder_evals"] == (20 if conditioning == "class" else 2)
    # E over u ~ U[0,1) of -log N((v + u) / 256; m, s^2) = 0.5 log(2 pi s^2) + ((c - m)^2 +
    # 1 / (12 * 256^2)) / (2 s^2), c = (v + 0.5) / 256; then bits/dim of the pixel values:
    # + log 256 nats a dimension, / log 2.
    m, logvar = 0.3, MIN_LOGVAR + np.log1p(np.exp(math.log(0.2**2) - MIN_LOGVAR))
    c = (pixels.astype(np.float64) + 0.5) / 256
    nats = 0.5 * (math.log(2 * math.pi) + logvar) + ((c - m) ** 2 + 1 / (12 * 256**2)) / (
        2 * math.exp(logvar)
    )
    want = (nats.mean(axis=(1, 2, 3)) + math.log(256)) / math.log(2)
    # Measured gap from the one dequantisation draw per pixel: 0.0014 bits/dim on average.
    assert abs(got["elbo"].mean() - want.mean()) < 0.01
    np.testing.assert_allclose(got["iwae"], got["elbo"], atol=1e-4)  # every weight equal
    if conditioning == "none":
        samples = api.generate(run, num=3)
        np.testing.assert_allclose(samples, np.full((3, 8, 8, 1), 0.3), atol=1e-6)
    # The diffusion runs' convention on [-1, 1] gives the same number for the same density.
    logp01 = jnp.asarray(-nats.sum(axis=(1, 2, 3))[:4])
    np.testing.assert_allclose(
        bits_per_dim(logp01 - 64 * math.log(2), 64, 256, -1.0, 1.0),
        bits_per_dim(logp01, 64, 256, 0.0, 1.0),
        rtol=1e-6,
    )


def test_binarised_bernoulli_bits_per_dim_match_the_closed_form(data_dir):
    config = tiny_vae(data_dir, **{"model.likelihood": "bernoulli"})
    config.vae.binarize = True
    run = _constant_run(config)
    pixels, _ = eval_pixels(config, None)
    got = vae_bits_per_dim(run, pixels, samples=2)
    p = 1 / (1 + math.exp(0.4))  # sigmoid(-0.4)
    q = pixels.astype(np.float64) / 255  # each pixel is 1 with probability q
    bits = -(q * math.log2(p) + (1 - q) * math.log2(1 - p))
    assert got["data"] == "binary"
    assert abs(got["elbo"].mean() - bits.mean()) < 0.02  # measured 0.003
    config.vae.binarize = False
    with pytest.raises(UserError, match="binarize=True"):
        vae_bits_per_dim(run, pixels)


def test_sample_py_outputs_of_a_vae_run(trained, tmp_path, caplog):
    _, workdir = trained
    run = api.load(workdir)
    out = str(tmp_path / "s")
    labels = np.repeat(np.arange(10, dtype=np.int32), 2)
    caplog.set_level(logging.INFO, logger="jldm")
    paths = sample_vae_run(run, out, labels=labels, per_class=2, seed=3, metrics=False)
    assert paths == [out + ".png", out + ".npz", out + "_recon.png", out + "_interp.png"]
    saved = np.load(out + ".npz")
    np.testing.assert_allclose(saved["images"], api.generate(run, labels=labels, seed=3))
    np.testing.assert_array_equal(saved["labels"], labels)
    # Cells of 8x8 images are upscaled 8x with a 1-pixel border: (rows, columns) of each grid.
    cells = lambda path: [(n - 1) // 65 for n in Image.open(path).size[::-1]]
    assert cells(out + ".png") == [10, 2]
    assert cells(out + "_recon.png") == [4, 2]  # 4 test images: 2 rows of images, 2 of recons
    assert cells(out + "_interp.png") == [2, 3 + 2]  # image a, 3 steps, image b
    assert "20 prior samples" in caplog.text
    with pytest.raises(UserError, match="--sampler does not apply to a VAE run"):
        sample_vae_run(run, out, labels=labels, per_class=2, unused={"sampler": "ddim"})


def test_compare_puts_the_vae_beside_the_diffusion_objectives(trained, monkeypatch):
    from jldm import compare
    from jldm.eval import quality

    _, workdir = trained
    seen = {}

    def fake_quality(images, labels, *args):
        seen.update(n=len(images), labels=labels)
        return {"class_accuracy": 0.5, "frechet": 12.0}

    monkeypatch.setattr(quality, "sample_quality", fake_quality)
    row = compare.compare_one(workdir, 200, 2, None, 0, 8, iwae_samples=2)
    assert row["objective"] == "vae" and row["sampler"] == "prior" and row["nfe"] == 1
    assert seen["n"] == 20 and list(seen["labels"][:3]) == [0, 0, 1]
    assert row["bpd_nfe"] == 20 and row["iwae_samples"] == 2 and row["bpd_images"] == 8
    assert 8.0 < row["bits_per_dim"] <= row["elbo_bpd"] + 1e-5
    table = compare.markdown([row])
    assert "| elbo_bpd |" in table and f"{row['elbo_bpd']:.3f}" in table


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"model.likelihood": "laplace"}, "model.likelihood='laplace' is not known"),
        ({"model.obs_var": "per_image"}, "model.obs_var='per_image' is not known"),
        ({"vae.binarize": True}, "vae.binarize=True needs model.likelihood=bernoulli"),
        ({"model.channel_mult": (1, 2, 2, 2)}, "data.resolution=8 is not divisible"),
        ({"model.latent_size": 0}, "model.latent_size=0 is out of range"),
        ({"vae.iwae_samples": 0}, "vae.iwae_samples=0 is out of range"),
        ({"sample.temperature": -1.0}, "sample.temperature=-1.0 is out of range"),
    ],
)
def test_bad_vae_settings_are_refused_in_one_line_before_anything_is_written(
    overrides, words, tmp_path
):
    config = tiny_vae(str(tmp_path / "tfds"), **overrides)
    workdir = tmp_path / "run"
    with pytest.raises(UserError, match=words) as e:
        api.train(config, str(workdir))
    assert "\n" not in str(e.value)
    assert not workdir.exists()
