"""Latent, toy, VAE, pretrained-sampling and compare runs on a cloud path (gs://): each file they
write becomes an object that reads back equal to what a local path gets, nothing lands in the
local working folder, and local paths still get their files.

The store is the in-memory gs:// of tests/fake_cloud.py; training, networks and samplers are
replaced by small stand-ins, so only the writing and reading is exercised.
"""

import importlib
import io
import json
import logging
import os
from types import SimpleNamespace

import numpy as np
import pytest
from etils import epath

from jldm.cli import run_cli
from jldm.data import paths
from jldm.errors import UserError
from tests import fake_cloud
from tests.tiny import (
    ROOT,  # noqa: F401  (puts the repository's configs on sys.path)
    tiny_config,
)

# A stand-in run's config whose sampler can spend jldm-compare's default --nfe.
_CONTINUOUS = tiny_config("/unused", **{"diffusion.objective": "vpsde"})


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    """The fake gs:// filesystem class (tests.fake_cloud.install)."""
    yield from fake_cloud.install(monkeypatch, tmp_path)


@pytest.fixture
def local(tmp_path):
    """A local folder outside the working folder, for the same writes on the local disk."""
    folder = tmp_path / "local"
    folder.mkdir()
    return str(folder)


def _config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def _npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of a local or cloud .npz."""
    with np.load(io.BytesIO(paths.read_bytes(path))) as z:
        return {k: z[k] for k in z.files}


def _assert_same_arrays(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def _images(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def test_perceptual_weights_are_written_and_read_back_as_one_object(cloud, local):
    from jldm.train.autoencoder import load_perceptual, save_perceptual

    params = {"conv": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.ones(3)}}
    save_perceptual(params, os.path.join(local, "perceptual.msgpack"))
    save_perceptual(params, "gs://bucket/w/perceptual.msgpack")
    assert paths.read_bytes("gs://bucket/w/perceptual.msgpack") == paths.read_bytes(
        os.path.join(local, "perceptual.msgpack")
    )
    back = load_perceptual("gs://bucket/w/perceptual.msgpack")
    np.testing.assert_array_equal(back["conv"]["kernel"], params["conv"]["kernel"])
    np.testing.assert_array_equal(back["conv"]["bias"], params["conv"]["bias"])
    assert os.listdir(local) == ["perceptual.msgpack"]  # no temporary file left behind
    with pytest.raises(UserError, match="no perceptual-net weights at gs://bucket/w/none"):
        load_perceptual("gs://bucket/w/none.msgpack")


def test_stage1_trains_its_perceptual_net_into_a_gs_folder_and_reloads_it(
    cloud, local, monkeypatch
):
    from jldm.train import autoencoder

    config = _config("digits_ldm")
    config.stage1.perceptual_steps = 0
    images, labels = _images(0, (2, 8, 8, 1)), np.zeros(2, np.int32)
    loaded = []
    load = autoencoder.load_perceptual
    monkeypatch.setattr(autoencoder, "load_perceptual", lambda p: loaded.append(p) or load(p))
    for folder in (os.path.join(local, "stage1"), "gs://bucket/run/stage1"):
        autoencoder._perceptual_features(config, images, labels, folder)
    assert loaded == []
    gs = "gs://bucket/run/stage1/perceptual.msgpack"
    assert paths.read_bytes(gs) == paths.read_bytes(
        os.path.join(local, "stage1", "perceptual.msgpack")
    )
    autoencoder._perceptual_features(config, images, labels, "gs://bucket/run/stage1")
    assert loaded == [gs]


def test_a_latent_run_makes_its_stage1_folder_in_the_store(cloud, local, tmp_path, monkeypatch):
    from jldm.train import ldm
    from jldm.train.fit import Result

    config = _config("digits_ldm")
    config.data.latent_dir = str(tmp_path / "latents")
    trained = []
    monkeypatch.setattr(ldm, "stage1_task", lambda config, folder, *arrays: folder)
    monkeypatch.setattr(
        ldm, "fit", lambda task, folder, *_: trained.append((task, folder)) or Result(False, None)
    )
    data = (_images(1, (4, 8, 8, 1)), np.zeros(4, np.int32))
    for workdir in ("gs://bucket/run", os.path.join(local, "run")):
        assert not ldm.fit_latent(config, workdir, data).complete
    gs, disk = "gs://bucket/run/stage1", os.path.join(local, "run", "stage1")
    assert trained == [(gs, gs), (disk, disk)]
    assert epath.Path(gs).is_dir() and os.path.isdir(disk)


def test_a_toy_report_uploads_the_samples_npz_and_png_written_locally(cloud, local, caplog):
    from jldm.diffusion.toy import GaussianMixture
    from jldm.train.toy import report_samples

    config = _config("toy_ncsn")
    mix = GaussianMixture(
        np.array([[0.0, 0.0], [3.0, 3.0]]), np.array([0.5, 0.5]), np.array([0.7, 0.3])
    )
    x = np.random.default_rng(2).normal(size=(200, 2))
    final = {"score_error": 0.1, "score_error_ema": 0.05}
    os.makedirs(os.path.join(local, "toy"))  # a local workdir exists once training starts
    caplog.set_level(logging.INFO, logger="jldm")
    for workdir in (os.path.join(local, "toy"), "gs://bucket/toy"):
        report_samples(config, workdir, mix, x, 1.0, final)
    assert "gs://bucket/toy/samples.png" in caplog.text
    for name in ("samples.png", "metrics.jsonl"):
        assert paths.isfile(f"gs://bucket/toy/{name}")
    arrays = _npz("gs://bucket/toy/samples.npz")
    _assert_same_arrays(arrays, _npz(os.path.join(local, "toy", "samples.npz")))
    np.testing.assert_array_equal(arrays["x"], x)
    assert paths.read_bytes("gs://bucket/toy/samples.png") == paths.read_bytes(
        os.path.join(local, "toy", "samples.png")
    )


def test_scatter_and_line_plots_upload_the_png_written_locally(cloud, local):
    from jldm.eval import plot
    from jldm.eval.scatter import save_scatter

    points = np.random.default_rng(3).normal(size=(100, 2))
    panels = [plot.Panel("recall", {"ddpm/ddim": ([10, 20], [0.5, 0.7])})]
    written = [
        (save_scatter(points, f"{root}/sub/s.png", (-3, 3, -3, 3), marks=points[:2]),
         plot.save_line_plot(panels, f"{root}/sub/p.png"))
        for root in (local, "gs://bucket/plots")
    ]  # fmt: skip
    assert written[1] == ("gs://bucket/plots/sub/s.png", "gs://bucket/plots/sub/p.png")
    for disk, gs in zip(*written, strict=True):
        assert os.path.isfile(disk) and paths.read_bytes(gs) == paths.read_bytes(disk)


def test_a_classifier_cache_is_saved_to_and_loaded_from_gs(cloud, local):
    from jldm.eval.classifier import Classifier

    rng = np.random.default_rng(4)
    params = [(rng.normal(size=(4, 3)).astype(np.float32), np.zeros(3, np.float32))]
    classifier = Classifier(params, np.full(4, 0.5, np.float32), 0.25, (2, 2, 1), "digits:key")
    for root in (local, "gs://bucket/cache"):
        classifier.save(paths.join(root, "classifier_digits.npz"))
    assert os.listdir(local) == ["classifier_digits.npz"]  # the temporary file was renamed
    _assert_same_arrays(
        _npz("gs://bucket/cache/classifier_digits.npz"),
        _npz(os.path.join(local, "classifier_digits.npz")),
    )
    back = Classifier.load("gs://bucket/cache/classifier_digits.npz")
    assert (back.scale, back.image_shape, back.data_key) == (0.25, (2, 2, 1), "digits:key")
    np.testing.assert_array_equal(back.params[0][0], params[0][0])


def _fake_vae(monkeypatch) -> SimpleNamespace:
    """jldm.sampling.vae's networks replaced by fixed images; returns a digits VAE run."""
    from jldm.sampling import vae

    def interpolate(run, a, b, labels, steps):
        t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[None, :, None, None, None]
        return (1 - t) * a[:, None] + t * b[:, None]

    def pairs(run, rows):
        a = _images(7, (rows, 8, 8, 1))
        return a, 1 - a, np.zeros(rows, np.int32)

    pixels = (_images(5, (4, 8, 8, 1)) * 255).astype(np.uint8)
    monkeypatch.setattr(vae, "generate", lambda run, labels, num, seed: _images(6, (num, 8, 8, 1)))
    monkeypatch.setattr(vae, "eval_pixels", lambda config, n: (pixels[:n], np.arange(n) % 10))
    monkeypatch.setattr(vae, "reconstruct", lambda run, x, labels: x * 0.5)
    monkeypatch.setattr(vae, "interpolation_pairs", pairs)
    monkeypatch.setattr(vae, "interpolate", interpolate)
    return SimpleNamespace(config=_config("digits_vae"), step=3)


def test_vae_sampling_uploads_the_npz_and_grids_written_locally(cloud, local, monkeypatch, capsys):
    from jldm.sampling.vae import sample_vae_run

    run = _fake_vae(monkeypatch)
    labels = np.array([0, 0, 1, 1], np.int32)
    disk = sample_vae_run(run, os.path.join(local, "s"), labels=labels, per_class=2, metrics=False)
    gs = sample_vae_run(run, "gs://bucket/run/s", labels=labels, per_class=2, metrics=False)
    suffixes = [".png", ".npz", "_recon.png", "_interp.png"]
    assert gs == [f"gs://bucket/run/s{s}" for s in suffixes]
    assert disk == [os.path.join(local, f"s{s}") for s in suffixes]
    _assert_same_arrays(_npz(gs[1]), _npz(disk[1]))
    np.testing.assert_array_equal(_npz(gs[1])["images"], _images(6, (4, 8, 8, 1)))
    for a, b in zip(gs, disk, strict=True):
        if a.endswith(".png"):
            assert paths.read_bytes(a) == paths.read_bytes(b)


def test_pretrained_sampling_uploads_the_png_and_npz_written_locally(
    cloud, local, monkeypatch, caplog
):
    from jldm.sampling import pretrained

    caplog.set_level(logging.INFO, logger="jldm")

    images = _images(8, (2, 8, 8, 3))
    pipe = SimpleNamespace(source="converted", root="/sd", load_seconds=0.0)
    monkeypatch.setattr(pretrained, "load_pretrained", lambda root, cache, dtype: pipe)
    monkeypatch.setattr(pretrained, "as_run", lambda pipe: None)
    monkeypatch.setattr(pretrained, "generate_text_to_image", lambda *a, **k: images)
    for out in (os.path.join(local, "new", "sd"), "gs://bucket/sd/out"):
        pretrained.sample_pretrained("/sd", ["a cat", "a dog"], out, precision="float32")
    assert "samples: gs://bucket/sd/out.png gs://bucket/sd/out.npz" in caplog.text
    disk = os.path.join(local, "new", "sd")
    assert paths.read_bytes("gs://bucket/sd/out.png") == paths.read_bytes(disk + ".png")
    arrays = _npz("gs://bucket/sd/out.npz")
    _assert_same_arrays(arrays, _npz(disk + ".npz"))
    assert arrays["prompts"].tolist() == ["a cat", "a dog"]


def test_compare_reads_gs_training_logs(cloud):
    from jldm import compare

    log = "".join(
        json.dumps({"step": s, "steps_per_sec": v}) + "\n"
        for s, v in [(1, 2.0), (2, 4.0), (3, 3.0)]
    )
    paths.write_text_atomic("gs://bucket/a/metrics.jsonl", log + "\n")
    assert compare.train_speed("gs://bucket/a") == 3.0
    assert compare.train_speed("gs://bucket/none") is None


def test_compare_takes_gs_workdirs_as_given_and_writes_its_tables_there(
    cloud, local, monkeypatch, capsys
):
    from jldm import compare
    from jldm.scripts import compare as script

    seen = []

    def compare_one(workdir, *args):
        seen.append(workdir)
        return {"run": workdir.rsplit("/", 1)[-1], "objective": "ddpm", "sampler": "ddim", "nfe": 4}

    monkeypatch.setattr(compare, "compare_one", compare_one)
    monkeypatch.setattr("jldm.runs.load.check_run", lambda w: _CONTINUOUS)  # the runs are stand-ins
    for name in ("a", "b"):
        paths.write_text_atomic(f"gs://bucket/runs/{name}/config.json", "{}")
        os.makedirs(os.path.join(local, "runs", name))
    gs_runs = ["gs://bucket/runs/a/", "gs://bucket/runs/b"]
    disk_runs = [os.path.join(local, "runs", n) for n in ("a", "b")]
    for runs, out in ((gs_runs, "gs://bucket/cmp/t"), (disk_runs, os.path.join(local, "t"))):
        argv = ["compare", *runs, f"--out={out}"]
        code = run_cli(script.main, argv, flag_values=script.FLAGS, positional=True)
        assert code == 0, capsys.readouterr().err
    assert seen == ["gs://bucket/runs/a", "gs://bucket/runs/b", *disk_runs]
    for ext in (".md", ".jsonl"):
        assert paths.read_text(f"gs://bucket/cmp/t{ext}") == paths.read_text(
            os.path.join(local, "t" + ext)
        )
    assert "| a | ddpm | ddim | 4 |" in paths.read_text("gs://bucket/cmp/t.md")
    argv = ["compare", "gs://bucket/runs/none"]
    code = run_cli(script.main, argv, flag_values=script.FLAGS, positional=True)
    assert code == 2
    assert "workdir gs://bucket/runs/none does not exist" in capsys.readouterr().err


def test_quality_keys_keep_a_gs_data_dir_and_make_local_ones_absolute(cloud, monkeypatch):
    from jldm.data.datasets import Dataset
    from jldm.eval import quality

    monkeypatch.setattr(quality, "_reference_cached", lambda *args: args)
    fashion = Dataset("fashion_mnist", "gs://bucket/data/", "~/fashion")
    keys = quality.reference_for(fashion, "gs://bucket/cache")
    assert keys == (fashion, "gs://bucket/cache")
    assert (fashion.data_dir, fashion.source_dir) == (
        "gs://bucket/data",
        os.path.expanduser("~/fashion"),
    )
    # The source folder does not identify the digits: equal keys whatever it is.
    keys = quality.reference_for(Dataset("digits", "data", "/fm"), "cache")
    assert keys == (Dataset("digits", os.path.abspath("data")), os.path.abspath("cache"))
    assert keys[0].source_dir == ""
