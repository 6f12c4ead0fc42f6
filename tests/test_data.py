"""Data package: builders, loading, preprocessing and the resumable sample order."""

import gzip
import hashlib
import json
import math
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from jldm.data import Dataset, Split, batch_indices, batches_for, load_split, preprocess, to_unit
from jldm.data.builders import FASHION_CLASS_NAMES, digits_split_indices
from jldm.errors import UserError
from tests.test_workdir import cloud  # noqa: F401 (the fake gs:// filesystem fixture)
from tests.tiny import ROOT


class JldmTestTinyImages(tfds.core.GeneratorBasedBuilder):
    """A stand-in for a prepared catalog dataset: PNG-encoded RGB images, as cifar10 stores them."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(4, 6, 3)),
                    "label": tfds.features.ClassLabel(names=["cat", "dog"]),
                    "id": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(5), "test": self._generate_examples(3)}

    def _generate_examples(self, n):
        for i, (image, label) in enumerate(zip(*tiny_images(n), strict=True)):
            # A PIL image is PNG-encoded by PIL; an array would need TensorFlow to encode.
            yield i, {"image": PIL.Image.fromarray(image), "label": int(label), "id": f"x{i}"}


def tiny_images(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(n)
    return rng.integers(0, 256, (n, 4, 6, 3), dtype=np.uint8), np.arange(n) % 2


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 | array.ndim
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fashion_dir(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(0)
    root = tmp_path / "fashion"
    root.mkdir()
    data = {}
    for split, prefix, n in [("train", "train", 6), ("test", "t10k", 4)]:
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        write_idx_gz(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx_gz(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        data[split] = (images, labels)
    return root, data


# Builders and loading.


def test_digits_splits_partition_sklearn_digits(tmp_path: Path) -> None:
    digits = load_digits()
    expected = np.floor(digits.images * 255 / 16 + 0.5).astype(np.uint8)[..., None]
    on_disk = Dataset("digits", str(tmp_path))
    train, test = load_split(on_disk, "train"), load_split(on_disk, "test")
    train_idx, test_idx = digits_split_indices(digits.target)

    assert len(train) + len(test) == 1797
    assert np.intersect1d(train_idx, test_idx).size == 0
    np.testing.assert_array_equal(np.union1d(train_idx, test_idx), np.arange(1797))
    for split, idx in [(train, train_idx), (test, test_idx)]:
        np.testing.assert_array_equal(split.images, expected[idx])
        np.testing.assert_array_equal(split.labels, digits.target[idx])
        assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    assert train.images.max() == 255 and train.images.min() == 0
    assert train.class_names == tuple(str(i) for i in range(10)) and train.num_classes == 10
    # Stratified: each class sends a fifth (rounded) of its images to test.
    for c in range(10):
        assert np.sum(test.labels == c) == round(np.sum(digits.target == c) / 5)


def test_processes_preparing_one_data_dir_at_once_all_read_the_same_data(tmp_path: Path) -> None:
    """Three processes start on a fresh data_dir together; one prepares, the others wait."""
    data_dir = tmp_path / "tfds"
    script = (
        "import hashlib, sys; from jldm.data import Dataset, load_split; "
        "s = load_split(Dataset('digits', sys.argv[1]), 'train'); "
        "print(hashlib.sha1(s.images.tobytes() + s.labels.tobytes()).hexdigest())"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(data_dir)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
    train = load_split(Dataset("digits", str(data_dir)), "train")
    digest = hashlib.sha1(train.images.tobytes() + train.labels.tobytes()).hexdigest()
    assert [out.strip().splitlines()[-1] for out, _ in outs] == [digest] * 3  # after TFDS chatter
    versions = list((data_dir / "jldm_digits").iterdir())
    assert [v.name for v in versions] == ["1.0.0"], versions


def test_fashion_builder_reads_idx_files_exactly(tmp_path: Path, fashion_dir) -> None:
    root, data = fashion_dir
    fashion = Dataset("fashion_mnist", str(tmp_path / "tfds"), str(root))
    for split in ("train", "test"):
        loaded = load_split(fashion, split)
        images, labels = data[split]
        np.testing.assert_array_equal(loaded.images, images[..., None])
        np.testing.assert_array_equal(loaded.labels, labels)
        assert loaded.class_names == FASHION_CLASS_NAMES


def test_missing_fashion_dir_is_a_user_error(tmp_path: Path) -> None:
    missing = Dataset("fashion_mnist", str(tmp_path / "tfds"), str(tmp_path / "nope"))
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        load_split(missing, "train")
    assert not (tmp_path / "tfds").exists()


def test_corrupt_idx_file_fails_cleanly_and_leaves_nothing_prepared(
    tmp_path: Path, fashion_dir
) -> None:
    root, data = fashion_dir
    good = (root / "t10k-labels-idx1-ubyte.gz").read_bytes()
    write_idx_gz(root / "t10k-labels-idx1-ubyte.gz", np.zeros((4, 1), np.uint8))  # wrong ndim
    fashion = Dataset("fashion_mnist", str(tmp_path / "tfds"), str(root))
    with pytest.raises(UserError, match="magic"):
        load_split(fashion, "test")
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(good)
    loaded = load_split(fashion, "test")
    np.testing.assert_array_equal(loaded.labels, data["test"][1])


def test_unprepared_catalog_dataset_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not prepared") as err:
        load_split(Dataset("mnist", str(tmp_path)), "train")
    assert "tfds build mnist" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_prepared_catalog_dataset_is_read_from_disk(tmp_path: Path) -> None:
    builder = JldmTestTinyImages(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    name = builder.name
    train = load_split(Dataset(name, str(tmp_path)), "train")
    images, labels = tiny_images(5)
    np.testing.assert_array_equal(train.images, images)
    np.testing.assert_array_equal(train.labels, labels)
    assert train.class_names == ("cat", "dog")
    assert len(load_split(Dataset(f"{name}:1.0.0", str(tmp_path)), "train[:3]+test")) == 6
    with pytest.raises(UserError, match="pick one of test, train"):
        load_split(Dataset(name, str(tmp_path)), "validation")

    # The same files under a config folder: the bare name must say which config to pick.
    configs = tmp_path / "with_configs"
    shutil.copytree(tmp_path / name / "1.0.0", configs / name / "small" / "1.0.0")
    with pytest.raises(UserError, match=f"data.name={name}/small"):
        load_split(Dataset(name, str(configs)), "train")
    assert len(load_split(Dataset(f"{name}/small", str(configs)), "test")) == 3

    # A tfrecord-only copy cannot be read without TensorFlow.
    tfrecord = tmp_path / "tfrecord" / name / "1.0.0"
    shutil.copytree(tmp_path / name / "1.0.0", tfrecord)
    for f in tfrecord.glob("*.array_record-*"):
        f.rename(f.with_name(f.name.replace("array_record", "tfrecord")))
    info = json.loads((tfrecord / "dataset_info.json").read_text())
    info["fileFormat"] = "tfrecord"
    (tfrecord / "dataset_info.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="stored as tfrecord.*array_record"):
        load_split(Dataset(name, str(tmp_path / "tfrecord")), "train")


@pytest.mark.usefixtures("cloud")
def test_a_cloud_data_dir_reaches_tfds_as_given() -> None:
    from jldm.data.sources import open_split

    # Not made local (/cwd/gs:/...): TFDS looked in the bucket and found nothing prepared.
    with pytest.raises(UserError, match="'mnist' is not prepared in gs://bucket/tfds: "):
        open_split(Dataset("mnist", "gs://bucket/tfds/"), "train")
    # This array_record build writes local files only: one line saying what to do instead.
    with pytest.raises(UserError, match="cannot write dataset 'digits' into gs://bucket/tfds"):
        open_split(Dataset("digits", "gs://bucket/tfds"), "train")


def test_the_registry_names_the_built_in_datasets_and_their_quality_classifiers() -> None:
    from jldm.data.datasets import BUILTINS, has_quality, reference_split

    assert sorted(BUILTINS) == ["digits", "fashion_mnist"]
    assert has_quality("digits") and has_quality("fashion_mnist")
    assert not has_quality("mnist") and not has_quality("cifar10/plain:1.0.0")
    assert reference_split("digits") == reference_split("cifar10") == "test"


def test_a_dataset_is_named_once_from_the_config(tmp_path: Path, monkeypatch) -> None:
    from jldm.configs.default import get_config
    from jldm.data.datasets import DEFAULT_FASHION_DIR, dataset_of

    monkeypatch.chdir(tmp_path)
    d = get_config().data
    d.data_dir, d.fashion_dir = "tfds", "~/fashion"
    # The source folder identifies fashion_mnist only; paths are resolved where it is named.
    assert dataset_of(d) == Dataset("digits", str(tmp_path / "tfds"))
    assert dataset_of(d).source_dir == ""
    d.name = "fashion_mnist"
    fashion = dataset_of(d)
    assert (fashion.data_dir, fashion.source_dir) == (
        str(tmp_path / "tfds"),
        str(Path("~/fashion").expanduser()),
    )
    assert Dataset("fashion_mnist", "tfds").source_dir == DEFAULT_FASHION_DIR
    d.name = "mnist:3.0.1"
    assert dataset_of(d) == Dataset("mnist:3.0.1", "tfds/", "elsewhere")
    # Equal data, one cached split.
    digits = load_split(Dataset("digits", "tfds"), "test")
    assert load_split(Dataset("digits", str(tmp_path / "tfds") + "/", "x"), "test") is digits
    with pytest.raises(UserError, match="not a dataset name: use digits, fashion_mnist, or a"):
        load_split(Dataset("no such/name/x", "tfds"), "train")


def test_split_rejects_wrong_dtypes() -> None:
    images = np.zeros((2, 4, 4, 1), np.uint8)
    assert len(Split(images, np.zeros(2, np.int32), ("a",))) == 2
    with pytest.raises(ValueError):
        Split(images, np.zeros(3, np.int32), ("a",))
    with pytest.raises(ValueError):
        Split(images.astype(np.float32), np.zeros(2, np.int32), ("a",))


# Sample order.


def test_batch_indices_is_a_pure_function() -> None:
    a = batch_indices(seed=3, step=7, batch_size=16, num_examples=50)
    b = batch_indices(seed=3, step=7, batch_size=16, num_examples=50)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.int64 and a.shape == (16,)
    assert not np.array_equal(a, batch_indices(seed=4, step=7, batch_size=16, num_examples=50))


@pytest.mark.parametrize("batch_size, num_examples", [(4, 12), (4, 10), (7, 3), (12, 12)])
def test_each_epoch_is_a_permutation(batch_size: int, num_examples: int) -> None:
    # Enough whole steps to cover three epochs' worth of stream positions, whatever B and N.
    lcm = batch_size * num_examples // math.gcd(batch_size, num_examples)
    steps = 3 * lcm // batch_size
    stream = batches_for(5, 0, steps, batch_size, num_examples).reshape(-1)
    epochs = stream.reshape(-1, num_examples)
    for epoch in epochs:
        np.testing.assert_array_equal(np.sort(epoch), np.arange(num_examples))
    assert np.all(np.bincount(stream, minlength=num_examples) == len(stream) // num_examples)
    if num_examples > 3:
        assert not np.array_equal(epochs[0], epochs[1])


def test_process_slices_concatenate_to_the_global_batch() -> None:
    for step in (0, 3, 11):
        full = batch_indices(1, step, 24, 37)
        for count in (2, 3, 4, 8):
            parts = [batch_indices(1, step, 24, 37, p, count) for p in range(count)]
            np.testing.assert_array_equal(np.concatenate(parts), full)
    with pytest.raises(UserError, match="not divisible"):
        batch_indices(1, 0, 6, 37, 0, 4)


def test_resuming_gives_the_uninterrupted_stream() -> None:
    uninterrupted = batches_for(9, 0, 20, 8, 13)
    np.testing.assert_array_equal(batches_for(9, 12, 8, 8, 13), uninterrupted[12:])
    for step in (0, 5, 19):
        np.testing.assert_array_equal(batch_indices(9, step, 8, 13), uninterrupted[step])
    # A batch that straddles an epoch boundary continues into the next epoch's permutation.
    stream = uninterrupted.reshape(-1)
    np.testing.assert_array_equal(np.sort(stream[13:26]), np.arange(13))


# Preprocessing.


def test_preprocess_range_shape_and_endpoints() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    images[0] = 0
    images[1] = 255
    out = preprocess(images, 16)
    assert out.shape == (3, 16, 16, 1) and out.dtype == np.float32
    assert out.min() >= -1.0 and out.max() <= 1.0
    assert np.all(out[0] == -1.0) and np.all(out[1] == 1.0)
    same = preprocess(images, 8)
    np.testing.assert_array_equal(same, images.astype(np.float32) / 127.5 - 1.0)


@pytest.mark.parametrize(
    "height, width, resolution", [(8, 8, 16), (28, 28, 16), (28, 20, 32), (5, 5, 3)]
)
def test_preprocess_matches_jax_bilinear_resize(height: int, width: int, resolution: int) -> None:
    rng = np.random.default_rng(height * width)
    images = rng.integers(0, 256, (2, height, width, 3), dtype=np.uint8)
    expected = jax.image.resize(
        images.astype(np.float32) / 127.5 - 1.0, (2, resolution, resolution, 3), "bilinear"
    )
    np.testing.assert_allclose(preprocess(images, resolution), expected, atol=1e-5)

    constant = np.full((1, height, width, 2), 77, np.uint8)
    np.testing.assert_allclose(preprocess(constant, resolution), 77 / 127.5 - 1.0, atol=1e-6)


def test_to_unit_maps_and_clips() -> None:
    x = np.array([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(to_unit(x), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    assert isinstance(to_unit(jax.numpy.asarray(x)), jax.Array)
