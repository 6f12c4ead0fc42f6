"""Metric writers (jldm.train.writers): config.train.writer picks TensorBoard, Weights & Biases
(offline here, read back from its run files) or none; a user's own writer gets every record;
metrics.jsonl is written whatever the choice."""

import json
import os
import sys

import numpy as np
import pytest

from jldm.api import train as run
from jldm.configs import toy_dsm
from jldm.errors import UserError
from jldm.train import writers
from jldm.train.metrics_log import MetricWriter
from tests import wandb_records
from tests.tb_events import read_events
from tests.tiny import apply_overrides

# A toy run of a few fused steps: seconds, mostly compilation.
TOY = {
    "train.steps": 4,
    "train.steps_per_call": 2,
    "train.log_every": 2,
    "train.checkpoint_every": 4,
    "train.warmup_steps": 1,
    "eval.num": 64,
    "eval.levels": 2,
    "sample.num": 32,
    "sample.steps": 4,
}


def toy_config(**overrides):
    return apply_overrides(toy_dsm.get_config(), {**TOY, **overrides})


def jsonl(workdir) -> list[dict]:
    return [json.loads(s) for s in open(os.path.join(workdir, "metrics.jsonl"))]


def read_id(workdir) -> str:
    return open(os.path.join(workdir, "wandb_run_id")).read().strip()


class Recording(writers.Writer):
    """Keeps what it is given."""

    def __init__(self):
        self.scalars, self.images, self.hparams = [], [], {}
        self.flushed = self.closed = False

    def write_scalars(self, step, scalars):
        self.scalars.append({"step": step, **scalars})

    def write_images(self, step, images):
        self.images.append((step, images))

    def write_hparams(self, hparams):
        self.hparams.update(hparams)

    def flush(self):
        self.flushed = True

    def close(self):
        self.closed = True


def test_wandb_offline_run_holds_the_logged_scalars_and_the_config(tmp_path, monkeypatch):
    for key in ("WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    workdir = str(tmp_path / "toy")
    assert run(toy_config(**{"train.writer": "wandb"}), workdir)
    assert not os.path.exists(os.path.join(workdir, "tb"))  # wandb instead of TensorBoard
    # the training loop's run, then the final sample report's, continuing the same run id
    files = wandb_records.offline_runs(str(tmp_path))
    assert len(files) == 2 and files == wandb_records.offline_runs(str(tmp_path), read_id(workdir))
    rows = [r for f in files for r in wandb_records.history(f)]
    logged = jsonl(workdir)
    assert [r["step"] for r in logged] == [0, 2, 4, 4]  # init, two log steps, the final report
    assert len(rows) == len(logged)
    for want, got in zip(logged, rows, strict=True):
        for key, value in want.items():
            assert got[key] == pytest.approx(value), key
    assert "mode_weight_error" in rows[-1]
    images = str(tmp_path / "images")  # a grid [H, W, 1] as the watch step logs it
    os.makedirs(images)
    log = MetricWriter(images, writer=writers.from_config(toy_config(**{"train.writer": "wandb"})))
    log.image(3, "samples/grid", np.full((6, 5, 1), 200, np.uint8))
    log.close()
    (image_run,) = wandb_records.offline_runs(str(tmp_path), read_id(images))
    (row,) = wandb_records.history(image_run)
    assert row["step"] == 3 and row["samples/grid/_type"] == "image-file"
    assert (row["samples/grid/height"], row["samples/grid/width"]) == (6, 5)
    cfg = wandb_records.config(files[0])
    assert cfg["train.writer"] == "wandb" and cfg["train.steps"] == 4
    assert cfg["diffusion.objective"] == "dsm" and cfg["data.means"] == [[0.0, 0.0]]


def test_a_users_writer_gets_every_record_and_the_config_and_stays_open(tmp_path):
    workdir = str(tmp_path / "toy")
    mine = Recording()
    assert run(toy_config(), workdir, writer=mine)
    assert mine.scalars == jsonl(workdir)  # the same records, NaN aside (none here)
    assert mine.hparams["train.steps"] == 4 and mine.hparams["data.means"] == [[0.0, 0.0]]
    assert mine.flushed and not mine.closed
    assert not os.path.exists(os.path.join(workdir, "tb"))
    with pytest.raises(UserError, match="has no write_images, write_hparams"):
        run(toy_config(), str(tmp_path / "other"), writer=type("W", (), {"write_scalars": id})())


def test_tensorboard_gets_scalars_images_and_the_config_as_hparams(tmp_path):
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    config = toy_config()
    log = MetricWriter(str(tmp_path), writer=writers.from_config(config))
    log.write(2, {"loss": 0.5})
    log.image(2, "grid", np.full((4, 5, 1), 200, np.uint8))
    log.close()
    (events,) = (tmp_path / "tb").iterdir()
    values = [(e.step, v) for e in read_events(events) for v in e.summary.value]
    assert [(s, v.simple_value) for s, v in values if v.tag == "loss"] == [(2, 0.5)]
    (image,) = [v.image for _, v in values if v.tag == "grid"]
    assert (image.height, image.width, image.colorspace) == (4, 5, 3)
    (start,) = [v for _, v in values if v.tag == "_hparams_/session_start_info"]
    data = HParamsPluginData.FromString(start.metadata.plugin_data.content)
    hp = data.session_start_info.hparams
    assert hp["train.writer"].string_value == "tensorboard"
    assert hp["train.steps"].number_value == 4 and hp["data.means"].string_value == "[[0.0, 0.0]]"
    assert jsonl(tmp_path) == [{"step": 2, "loss": 0.5}]


def test_writer_none_keeps_only_metrics_jsonl(tmp_path):
    log = MetricWriter(
        str(tmp_path), writer=writers.from_config(toy_config(**{"train.writer": "none"}))
    )
    log.write(1, {"loss": float("nan")})
    log.close()
    assert os.listdir(tmp_path) == ["metrics.jsonl"] and jsonl(tmp_path) == [
        {"step": 1, "loss": None}
    ]


def test_an_unknown_writer_or_a_missing_wandb_is_refused_before_anything_is_written(
    tmp_path, monkeypatch
):
    workdir = tmp_path / "w"
    with pytest.raises(UserError, match=r"train.writer='mlflow' is none of tensorboard \| wandb"):
        run(toy_config(**{"train.writer": "mlflow"}), str(workdir))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(UserError, match=r"pip install 'jldm\[wandb\]'"):
        run(toy_config(**{"train.writer": "wandb"}), str(workdir))
    assert not workdir.exists()
