"""The encoded training set of a latent run: written once as array_record shards, streamed by
(seed, step) like any split, reused when finished, rebuilt when a crash left it half-written."""

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from jldm.build.autoencoder import build_autoencoder
from jldm.data import batches_for
from jldm.data import latents as latent_set
from jldm.data.datasets import dataset_of
from jldm.data.sources import open_split
from jldm.data.stream import Pixels, stream
from jldm.errors import UserError
from jldm.runs.load import Stage1
from jldm.train import ldm
from tests.test_ldm import tiny_ldm
from tests.tiny import ROOT

STEP = 4  # the stage-1 checkpoint step the sets are made from


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(config, pixel source, stage 1, in-memory (mean, std, labels) of every training image)."""
    root = tmp_path_factory.mktemp("latents")
    config = tiny_ldm(str(root / "tfds"))
    source = Pixels(open_split(dataset_of(config.data), "train"), config.data.resolution)
    ae = build_autoencoder(config)
    images, labels = source.rows(np.arange(len(source)))
    params = jax.jit(ae.init)(jax.random.PRNGKey(3), images[:1])["params"]
    # Every image at once, in memory: the reference the shards are checked against.
    post = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=ae.encode))(params, images)
    whole = (np.asarray(post.mean), np.asarray(post.std), labels)
    return config, source, Stage1(ae, params, 1.0), whole


def _encode(setup, workdir, step=STEP):
    config, source, stage1, _ = setup
    return ldm.encoded_training_set(config, str(workdir), source, stage1, step, "/stage1")


@pytest.fixture(scope="module")
def written(setup, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(latent_set, "SHARD_BYTES", 300 * 1024)  # several shards
        return workdir, _encode(setup, workdir)


def test_the_stored_posteriors_equal_the_in_memory_encodings(setup, written):
    _, source, _, (mean, std, labels) = setup
    workdir, latents = written
    assert latents.folder == str(workdir / "latents")
    assert latents.meta["shards"] > 1 and len(latents) == len(source) == len(mean)
    assert latent_set.MARKER in os.listdir(latents.folder)
    moments, got_labels = latents.rows(np.arange(len(latents)))
    np.testing.assert_allclose(moments[:, 0], mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(moments[:, 1], std, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got_labels, labels)
    # The scale is 1 / std of the posterior means, as LDM's scale factor.
    assert latents.scale == pytest.approx(1.0 / np.std(mean.astype(np.float64)), rel=1e-5)
    # Records read by index in any order: the same rows.
    idx = np.array([len(mean) - 1, 0, 517, 3])
    np.testing.assert_array_equal(latents.rows(idx)[0], moments[idx])


def test_streamed_latents_are_fresh_posterior_draws_that_resume_exactly(written):
    _, latents = written
    common = dict(seed=7, batch_size=16, steps_per_call=2, start=0, stop=8)
    got = list(stream(latents, **common))
    moments, _ = latents.rows(np.arange(len(latents)))
    eps = []
    for step, z, labels in got:
        idx = batches_for(7, step, 2, 16, len(latents))
        mean, std = moments[idx, 0], moments[idx, 1]
        # z = scale * (mean + std * eps): recover eps from what the stream gave.
        eps.append((z / latents.scale - mean) / std)
        assert z.shape == (2, 16, *latents.shape) and labels.shape == (2, 16)
        positions = (np.arange(step, step + 2)[:, None] * 16 + np.arange(16)).astype(np.int64)
        want = latents.scale * (mean + std * latent_set.noise(7, positions, latents.shape))
        np.testing.assert_allclose(z, want, rtol=1e-6, atol=1e-6)
    eps = np.concatenate([e.reshape(-1) for e in eps])
    assert abs(eps.mean()) < 0.05 and abs(eps.var() - 1.0) < 0.05  # N(0, 1): 4096 draws
    # The same record drawn at two stream positions gets two different latents.
    a, b = latent_set.noise(7, np.array([0, 1]), latents.shape)
    assert np.abs(a - b).max() > 0.1
    # Two processes' halves make up the global batch; a resume at step 4 draws what the
    # uninterrupted stream drew there.
    halves = [list(stream(latents, process_index=p, process_count=2, **common)) for p in (0, 1)]
    for (_, whole, _), (_, x, _), (_, y, _) in zip(got, *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([x, y], axis=1), whole)
    resumed = list(stream(latents, **{**common, "start": 4}))
    for (s1, z1, l1), (s2, z2, l2) in zip(resumed, got[2:], strict=True):
        assert s1 == s2
        np.testing.assert_array_equal(z1, z2)
        np.testing.assert_array_equal(l1, l2)


def test_a_finished_set_is_reused_and_checked_against_its_stage1(setup, written, monkeypatch):
    workdir, latents = written
    folder = latents.folder
    before = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}
    monkeypatch.setattr(ldm, "_encoded", lambda *a: pytest.fail("encoded the set again"))
    again = _encode(setup, workdir)
    after = {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}
    assert after == before and again.meta == latents.meta
    first = next(iter(stream(latents, seed=1, batch_size=8, steps_per_call=1, start=3, stop=4)))
    second = next(iter(stream(again, seed=1, batch_size=8, steps_per_call=1, start=3, stop=4)))
    np.testing.assert_array_equal(first[1], second[1])
    with pytest.raises(UserError, match=r"stage1_step 4 -> 5.*delete") as e:
        _encode(setup, workdir, step=5)
    assert "\n" not in str(e.value)
    assert {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)} == before


KILLED = """
import sys, time
import numpy as np
from jldm.data.latents import write_latents

def chunks():
    for i in range(100):
        mean = np.full((64, 2, 2, 1), i, np.float32)
        yield mean, np.ones_like(mean), np.zeros(64)
        if i == 3:
            print("writing", flush=True)
            time.sleep(600)

write_latents(sys.argv[1], chunks(), 6400, {"what": "killed"}, shard_bytes=4096)
"""


def test_a_set_killed_mid_write_has_no_marker_and_is_rebuilt(setup, tmp_path):
    workdir = tmp_path / "run"
    folder = workdir / "latents"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED, str(folder)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "writing"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = sorted(os.listdir(folder))
    assert left and latent_set.MARKER not in left  # shards, but no finished set
    assert latent_set.open_latents(str(folder), {"what": "killed"}) is None
    latents = _encode(setup, workdir)
    assert latent_set.MARKER in os.listdir(folder)
    mean = setup[3][0]
    np.testing.assert_allclose(latents.rows(np.arange(len(mean)))[0][:, 0], mean, atol=1e-5)
    assert latents.meta["shards"] == len([n for n in os.listdir(folder) if n.startswith("shard")])


def test_a_cloud_latent_folder_is_refused_before_stage1_trains(setup, tmp_path):
    config = setup[0].copy_and_resolve_references()
    config.data.latent_dir = "gs://bucket/latents"
    with pytest.raises(UserError, match="data.latent_dir to a folder on a local disk"):
        ldm.fit_latent(config, str(tmp_path / "run"), setup[1])
    assert not (tmp_path / "run").exists()


def test_a_latent_folder_that_cannot_be_written_is_one_line(setup, tmp_path):
    config, source, stage1, _ = setup
    (tmp_path / "file").write_text("x")
    config = config.copy_and_resolve_references()
    config.data.latent_dir = str(tmp_path / "file" / "latents")
    with pytest.raises(UserError, match="cannot write the encoded training set into") as e:
        ldm.encoded_training_set(config, str(tmp_path / "run"), source, stage1, STEP, "/s1")
    assert "\n" not in str(e.value) and "data.latent_dir" in str(e.value)
