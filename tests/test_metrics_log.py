"""The metric log: JSON lines and TensorBoard event files, written without importing torch."""

import json
import subprocess
import sys

from tests.tb_events import read_events
from tests.tiny import ROOT


def test_scalars_reach_jsonl_and_tensorboard_and_torch_stays_unimported(tmp_path):
    script = (
        "import sys; from jldm.train.metrics_log import MetricWriter; "
        "w = MetricWriter(sys.argv[1]); w.write(3, {'loss': 0.5, 'lr': 0.25}); "
        "w.write(7, {'loss': 0.125}); w.close(); print('torch' in sys.modules)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["False"]
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"step": 3, "loss": 0.5, "lr": 0.25}, {"step": 7, "loss": 0.125}]
    (events_file,) = (tmp_path / "tb").iterdir()
    scalars = [
        (e.step, v.tag, v.simple_value) for e in read_events(events_file) for v in e.summary.value
    ]
    assert scalars == [(3, "loss", 0.5), (3, "lr", 0.25), (7, "loss", 0.125)]
