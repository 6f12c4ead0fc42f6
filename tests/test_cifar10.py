"""configs/cifar10_ddpm.py: its UNet has the DDPM CIFAR-10 size, one train.py command trains it
on a prepared cifar10 (here a stand-in of the same shapes, with a shrunk UNet), the watch step
adds the FID of its samples when Inception weights are configured, and a missing cifar10 stops
train.py at once with the command that prepares it."""

import json
import os

import jax
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

import train
from jldm.build.model import build_model, init_params
from jldm.cli import run_cli
from jldm.configs import cifar10_ddpm
from tests.clitools import assert_error_line
from tests.tiny import ROOT, as_flags

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class StandIn(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A prepared `cifar10` as TFDS stores it (PNG-encoded 32x32x3 images, 10 named classes, an
    id), with 40 train and 4 test images."""

    name = "cifar10"
    VERSION = tfds.core.Version("3.0.2")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "image": tfds.features.Image(shape=(32, 32, 3)),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40, 0), "test": self._generate_examples(4, 1)}

    def _generate_examples(self, n, seed):
        images = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        for i, image in enumerate(images):
            yield i, {"id": f"x{i}", "image": PIL.Image.fromarray(image), "label": i % 10}


# A shrunk UNet (one level, one ResBlock) and a two-step schedule; the watch step runs at
# step 2.
SMALL = {
    "model.channels": 16,
    "model.channel_mult": (1,),
    "model.num_res_blocks": 1,
    "model.norm_groups": 8,
    "model.context_dim": 32,
    "model.num_heads": 2,
    "model.dtype": "float32",
    "train.batch_size": 8,
    "train.steps": 2,
    "train.warmup_steps": 1,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.sample_every": 2,
    "train.sample_quality": 10,  # the grid's shape: its compiled sampler is reused
    "sample.steps": 2,
    "sample.per_class": 1,
}


def _train(workdir: str, data_dir: str, **extra) -> int:
    argv = ["train.py", "--config", "configs/cifar10_ddpm.py", "--workdir", workdir]
    argv += as_flags({"data.data_dir": data_dir, **SMALL, **extra})
    return run_cli(train.main, argv, flag_values=train.FLAGS)


def test_the_unet_has_the_ddpm_cifar10_size():
    config = cifar10_ddpm.get_config()
    model = build_model(config)
    shapes = jax.eval_shape(lambda k: init_params(model, config, k), jax.random.PRNGKey(0))
    count = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(shapes))
    assert count == 35_614_723  # Ho et al.'s CIFAR-10 UNet: 35.7 M
    assert config.data.random_flip and config.train.sample_every > 0


def test_a_missing_cifar10_stops_train_py_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    workdir = tmp_path / "run"
    code = _train(str(workdir), str(tmp_path / "empty"))
    build = f"tfds build cifar10 --data_dir {tmp_path / 'empty'} --file_format array_record"
    assert_error_line(code, capsys.readouterr().err, "'cifar10' is not prepared", build)
    assert not workdir.exists()


def test_two_steps_on_a_stand_in_cifar10_with_fid_in_the_watch_step(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from jldm.eval import fid as fid_module
    from jldm.train import diffusion
    from tests.test_fid import _frechet_of_features
    from tests.torch_inception import random_net

    data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
    StandIn(data_dir=data_dir, file_format="array_record").download_and_prepare()
    net = random_net()
    weights = str(tmp_path / "inception.pth")
    torch.save(net.state_dict(), weights)
    seen = []

    def recording(images01, *args, **kwargs):
        seen.append((np.array(images01), args))
        return fid_module.fid_to_split(images01, *args, **kwargs)

    monkeypatch.setattr(diffusion, "fid_to_split", recording)
    monkeypatch.chdir(ROOT)
    assert _train(workdir, data_dir, **{"train.fid_weights": weights}) == 0
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    (watched,) = [r for r in rows if "sample/fid" in r]
    assert watched["step"] == 2 and watched["sample/fid_samples"] == 10

    # The same FID from PyTorch's features of the same samples and of the test split.
    ((samples, (dataset, split, *_)),) = seen
    assert (dataset.name, dataset.data_dir, split) == ("cifar10", data_dir, "test")
    assert samples.shape == (10, 32, 32, 3)
    test = StandIn(data_dir=data_dir).as_data_source(split="test")
    test_images = np.stack([np.asarray(r["image"]) for r in test]).astype(np.float32) / 255.0

    def features(x):
        with torch.no_grad():
            return net(torch.from_numpy(x).permute(0, 3, 1, 2)).double().numpy()

    want = _frechet_of_features(features(samples.astype(np.float32)), features(test_images))
    assert watched["sample/fid"] == pytest.approx(want, rel=1e-3)
