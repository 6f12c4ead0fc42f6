"""Watching a run as it trains: EMA sample grids (PNG and TensorBoard), quality figures, the
learning rate and the config in TensorBoard."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from jldm.api import train
from jldm.build.state import learning_rate
from jldm.errors import UserError
from jldm.eval.grid import readable_scale
from tests.tb_events import read_events
from tests.tiny import tiny_config


def test_a_run_shows_grids_quality_and_learning_rate_while_it_trains(tmp_path, monkeypatch):
    monkeypatch.delenv("JLDM_FID_WEIGHTS", raising=False)  # no weights: no FID
    config = tiny_config(
        str(tmp_path / "tfds"),
        **{
            "train.steps": 2,
            "train.log_every": 1,
            "train.sample_every": 1,
            "train.sample_quality": 20,
        },
    )
    workdir = tmp_path / "run"
    assert train(config, str(workdir))
    grids = sorted(os.listdir(workdir / "samples"))
    assert grids == ["step_0000001.png", "step_0000002.png"]
    grid = np.asarray(Image.open(workdir / "samples" / grids[0]))
    cell = config.data.resolution * readable_scale(np.zeros((1, 8, 8, 1)))
    # One row per class, per_class images in each.
    assert grid.shape == (10 * (cell + 1) + 1, config.sample.per_class * (cell + 1) + 1)

    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    quality = {r["step"]: r for r in rows if "sample/class_accuracy" in r}
    assert sorted(quality) == [1, 2]
    for r in quality.values():
        assert 0 <= r["sample/class_accuracy"] <= 1 and r["sample/frechet"] > 0
        assert r["sample/num_samples"] == 20
        assert "sample/fid" not in r
    schedule = learning_rate(config.train)
    logged = {r["step"]: r["lr"] for r in rows if "lr" in r}
    assert sorted(logged) == [1, 2] and all(v == float(schedule(s)) for s, v in logged.items())
    assert logged[1] < logged[2] == pytest.approx(config.train.lr)  # warmup, then constant

    (events,) = (workdir / "tb").iterdir()
    values = [(e.step, v) for e in read_events(events) for v in e.summary.value]
    images = [(s, v.image) for s, v in values if v.HasField("image")]
    assert [s for s, _ in images] == [1, 2]
    png = images[0][1]
    assert (png.height, png.width) == grid.shape[:2] and png.encoded_image_string[:4] == b"\x89PNG"
    texts = [v for _, v in values if v.tag.startswith("config")]
    assert texts and b'"sample_every": 1' in texts[0].tensor.string_val[0]


@pytest.mark.parametrize("where", ["config", "environment"])
def test_fid_weights_that_are_not_there_stop_the_run_before_it_starts(tmp_path, monkeypatch, where):
    # The FID of the watch step itself is checked in test_cifar10 (one training run for both).
    missing = str(tmp_path / "pt_inception.pth")
    monkeypatch.delenv("JLDM_FID_WEIGHTS", raising=False)
    overrides = {"train.sample_every": 1}
    if where == "config":
        overrides["train.fid_weights"] = missing
    else:
        monkeypatch.setenv("JLDM_FID_WEIGHTS", missing)
    config = tiny_config(str(tmp_path / "tfds"), **overrides)
    name = "train.fid_weights" if where == "config" else "$JLDM_FID_WEIGHTS"
    with pytest.raises(UserError, match=rf"^{re.escape(name)} names {missing}, which is not a f"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
