"""Scalars to WORKDIR/metrics.jsonl and TensorBoard event files (WORKDIR/tb), which also get
images (sample grids during training) and text (the config)."""

import json
import math
import os
import sys

import numpy as np


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without torch.

    tensorboardX imports torch whenever it is installed (to accept its tensors), which costs
    every training start seconds; only Python floats are written here. A torch that is already
    imported stays as it is.
    """
    hide = "torch" not in sys.modules
    if hide:
        sys.modules["torch"] = None  # `import torch` raises ImportError while this is set
    try:
        from tensorboardX import SummaryWriter
    finally:
        if hide:
            del sys.modules["torch"]
    return SummaryWriter


def _finite_or_none(value):
    """NaN and Inf as JSON null: strict JSON has no token for them."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        value = float(value)
    return value if math.isfinite(value) else None


class MetricWriter:
    """Appends one JSON line per logged step and mirrors the scalars to TensorBoard."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")  # noqa: SIM115
            self._tb = _summary_writer_class()(os.path.join(workdir, "tb"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _finite_or_none(v) for k, v in scalars.items()}}
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()
        for k, v in scalars.items():
            self._tb.add_scalar(k, v, step)

    def image(self, step: int, tag: str, image: np.ndarray) -> None:
        """An image [H, W, C] uint8 (C = 1 or 3) to TensorBoard."""
        if self.enabled:
            rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image
            self._tb.add_image(tag, rgb, step, dataformats="HWC")

    def text(self, step: int, tag: str, text: str) -> None:
        """Text (Markdown) to TensorBoard."""
        if self.enabled:
            self._tb.add_text(tag, text, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
