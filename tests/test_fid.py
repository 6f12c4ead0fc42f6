"""FID: the Frechet distance against a float64 reference, the torch-free checkpoint reader, the
Flax FID Inception against a PyTorch implementation on random weights, and the FID CLI.

pytorch-fid needs torchvision, whose PyPI wheels are CUDA builds that do not load beside the CPU
torch wheel (and, once installed, break transformers' model imports), so the PyTorch reference
here is written in the test from torch.nn primitives, in NCHW, following torchvision's
Inception3 layout with pytorch-fid's FID blocks.
"""

import os

import jax
import numpy as np
import pytest

from jldm.errors import UserError
from jldm.eval.fid import frechet_low_rank
from jldm.eval.frechet import feature_stats, frechet_distance
from tests.clitools import assert_user_error, cli


def _frechet_reference(mu1, s1, mu2, s2) -> float:
    """tr(sqrt(s1 s2)) as tr(sqrt(r s2 r)), r = s1^(1/2): symmetric PSD roots in float64."""
    w, v = np.linalg.eigh(s1)
    r = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(r @ s2 @ r)
    covmean = np.sum(np.sqrt(np.clip(inner, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * covmean)


def _frechet_of_features(fa: np.ndarray, fb: np.ndarray) -> float:
    """The Frechet distance of the Gaussians fitted to features fa [Na, F] and fb [Nb, F], from
    the features themselves: with A, B the centred features over sqrt(N - 1), s1 = A^T A and
    s2 = B^T B, and tr(sqrt(s1 s2)) is the sum of the singular values of B A^T (Nb x Na), so a
    few images need no F x F root (float64)."""
    a = (fa - fa.mean(0)) / np.sqrt(len(fa) - 1)
    b = (fb - fb.mean(0)) / np.sqrt(len(fb) - 1)
    nuclear = np.sum(np.linalg.svd(b @ a.T, compute_uv=False))
    diff = fa.mean(0) - fb.mean(0)
    return float(diff @ diff + np.sum(a * a) + np.sum(b * b) - 2 * nuclear)


def test_frechet_distance_matches_float64_reference_full_and_rank_deficient():
    rng = np.random.default_rng(0)
    f = 48
    for n in (400, 20):  # n < f: singular covariances, as FID on few samples gives
        a = rng.standard_normal((n, f)) @ rng.standard_normal((f, f)) * 0.3
        b = rng.standard_normal((n, f)) * 1.3 + 0.2
        (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
        want = _frechet_reference(mu1, s1, mu2, s2)
        assert _frechet_of_features(a, b) == pytest.approx(want, rel=1e-7)
        got = frechet_distance(mu1, s1, mu2, s2)
        # The ridge used for singular products moves the value by O(eps * F) at most.
        assert abs(got - want) < 1e-6 * max(1.0, want) + 1e-4, (n, got, want)
        # The low-rank form used when a side has fewer images than features is exact.
        low = frechet_low_rank(a, mu2, s2)
        assert low == pytest.approx(want, rel=1e-6), n
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """(torch net, legacy-format .pth path, zip-format .pth path)."""
    torch = pytest.importorskip("torch")
    from tests.torch_inception import random_net

    root = tmp_path_factory.mktemp("fid")
    net = random_net()
    legacy, zipped = str(root / "legacy.pth"), str(root / "zip.pth")
    torch.save(net.state_dict(), legacy, _use_new_zipfile_serialization=False)
    torch.save(net.state_dict(), zipped)
    return net, legacy, zipped


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def test_torch_reader_reads_both_checkpoint_layouts(weights):
    from jldm.convert.inception import read_state_dict

    net, legacy, zipped = weights
    ref = {k: v.numpy() for k, v in net.state_dict().items()}
    for path in (legacy, zipped):
        got = read_state_dict(path)
        assert got.keys() == ref.keys()
        assert all(np.array_equal(got[k], ref[k]) for k in ref)


def test_inception_features_match_pytorch(weights, tmp_path):
    import torch
    import torch.nn.functional as F

    from jldm.convert.inception import export_safetensors, load_inception
    from jldm.eval.fid import inception_features
    from jldm.nn.inception import resize_bilinear

    net, legacy, _ = weights
    # The resize alone, down and up, against PyTorch's bilinear interpolation.
    for size in (512, 40):
        x = _images(1, size, 5)
        want = F.interpolate(
            torch.from_numpy(x).permute(0, 3, 1, 2), size=(299, 299), mode="bilinear"
        )
        got = np.asarray(resize_bilinear(x, 299)).transpose(0, 3, 1, 2)
        assert np.max(np.abs(got - want.numpy())) < 1e-5

    images = _images(4, 32, 1)
    with torch.no_grad():
        ref = net(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    model, variables = load_inception(legacy)
    ours = inception_features(model, variables, images, batch_size=4)
    assert ours.shape == (4, 2048)
    assert np.max(np.abs(ours - ref)) / np.max(np.abs(ref)) < 1e-4
    # The safetensors export loads to the same variables, classifier head dropped.
    st = str(tmp_path / "w.safetensors")
    export_safetensors(legacy, st)
    _, again = load_inception(st)
    same = jax.tree_util.tree_map(lambda a, b: np.array_equal(a, b), variables, again)
    assert all(jax.tree_util.tree_leaves(same))


def test_wrong_weights_are_one_line_errors(weights, tmp_path):
    import torch

    from jldm.convert.inception import load_inception

    net, _, _ = weights
    sd = net.state_dict()
    sd.pop("Mixed_6b.branch7x7_2.conv.weight")
    path = str(tmp_path / "bad.pth")
    torch.save(sd, path)
    with pytest.raises(UserError, match="Mixed_6b.branch7x7_2.conv.weight") as e:
        load_inception(path)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        load_inception(str(tmp_path / "none.pth"))


def test_fid_cli_on_images_and_on_stored_stats(weights, tmp_path):
    import torch

    from jldm.eval.fid import load_set

    net, legacy, _ = weights
    samples, ref, stats = (str(tmp_path / n) for n in ("s.npz", "r.npz", "stats.npz"))
    a, b = _images(4, 32, 2), _images(4, 32, 3) ** 2
    np.savez(samples, images=a)
    np.savez(ref, images=(b * 255).round().astype(np.uint8))
    proc = cli(
        "-m", "jldm.eval.fid", samples, ref, f"--weights={legacy}", "--batch_size=4",
        f"--save_stats={stats}",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    value = float(proc.stdout.split("FID ")[1].split()[0])
    # The same distance from PyTorch's features of the same images.
    with torch.no_grad():
        fa = net(torch.from_numpy(a).permute(0, 3, 1, 2)).double().numpy()
        ub = ((b * 255).round() / 255).astype(np.float32)
        fb = net(torch.from_numpy(ub).permute(0, 3, 1, 2)).double().numpy()
    assert value == pytest.approx(_frechet_of_features(fa, fb), rel=1e-3)
    kind, (mu, sigma) = load_set(stats)
    assert kind == "stats" and mu.shape == (2048,) and sigma.shape == (2048, 2048)
    assert np.max(np.abs(mu - fb.mean(0))) < 1e-4 * np.max(np.abs(fb))
    bad = cli("-m", "jldm.eval.fid", samples, ref)
    assert_user_error(bad, "--weights")


def test_streamed_statistics_equal_the_whole_set_statistics():
    from jldm.eval.fid import _streamed_stats

    rng = np.random.default_rng(0)
    many = rng.gamma(2.0, 0.3, size=(2100, 2048))  # more than F: no features kept
    mu, sigma, kept, count = _streamed_stats(np.array_split(many, 3))
    want_mu, want_sigma = feature_stats(many)
    assert kept is None and count == 2100
    np.testing.assert_allclose(mu, want_mu, rtol=1e-12)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-9, atol=1e-12)
    few = many[:50]
    mu, sigma, kept, count = _streamed_stats([few[:20], few[20:]])
    np.testing.assert_array_equal(kept, few)
    assert count == 50
    np.testing.assert_allclose(sigma, feature_stats(few)[1], rtol=1e-9, atol=1e-12)


def test_a_dataset_reference_is_dataset_colon_split():
    from jldm.eval.fid import parse_ref

    assert parse_ref("digits:test") == ("digits", "test")
    assert parse_ref("mnist/plain:3.0.1:train[:10%]") == ("mnist/plain:3.0.1", "train[:10%]")
    for bad in ("digits", ":test", "digits:"):
        with pytest.raises(UserError, match="pass DATASET:SPLIT"):
            parse_ref(bad)


def test_fid_of_a_folder_of_shards_and_of_a_dataset_split(weights, tmp_path, monkeypatch):
    from jldm.convert.inception import load_inception
    from jldm.data import Dataset, load_split
    from jldm.eval import fid as fid_module

    _, legacy, _ = weights
    model, variables = load_inception(legacy)  # one model: one compiled forward for all sets
    stats = lambda path: fid_module.set_stats(model, variables, path, 4)
    images = (_images(5, 8, 4) * 255).round().astype(np.uint8)  # 8x8, as the digits
    folder, whole, ref = tmp_path / "shards", str(tmp_path / "all.npz"), str(tmp_path / "r.npz")
    folder.mkdir()
    np.savez(folder / "shard_00000.npz", images=images[:3], labels=np.zeros(3))
    np.savez(folder / "shard_00001.npz", images=images[3:], labels=np.zeros(2))
    np.savez(whole, images=images)
    by_folder, by_file = stats(str(folder)), stats(whole)
    for a, b in zip(by_folder, by_file, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)

    # A dataset split as the reference: the statistics of its images in an .npz, then cached.
    data_dir = str(tmp_path / "tfds")
    digits = Dataset("digits", data_dir, str(tmp_path / "none"))
    np.savez(ref, images=load_split(digits, "test[:6]").images)
    assert fid_module.parse_ref("digits:test[:6]") == ("digits", "test[:6]")
    split = lambda: fid_module.dataset_stats(model, variables, digits, "test[:6]", legacy, 4)
    first = split()
    for a, b in zip(first, stats(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    cached = os.listdir(os.path.join(os.environ["JLDM_CACHE_DIR"], "fid"))
    assert [n for n in cached if n.startswith("digits-test")], cached
    monkeypatch.setattr("jldm.data.load_split", lambda *a: pytest.fail("read the split again"))
    for a, b in zip(split(), first, strict=True):
        np.testing.assert_array_equal(a, b)
    assert fid_module.fid_between(by_file, first) > 0
