"""Text conditions: the caption tokenizer, and class ids as captions' token ids."""

import functools
import os
from collections.abc import Callable

import ml_collections
import numpy as np

from jldm.errors import UserError


def text_tokenizer(config: ml_collections.ConfigDict):
    """The caption tokenizer: loaded from text.tokenizer, or built from the dataset captions."""
    from jldm.data.captions import CaptionTokenizer

    path = config.text.tokenizer
    if not path:
        return _built_tokenizer()
    try:
        return CaptionTokenizer.load(os.path.expanduser(path))
    except FileNotFoundError as e:
        raise UserError(f"text.tokenizer: {e}") from None


@functools.lru_cache(maxsize=1)
def _built_tokenizer():
    from jldm.data.captions import build_tokenizer

    return build_tokenizer()


def caption_table(config: ml_collections.ConfigDict) -> np.ndarray:
    """Token ids of every (class, template) caption: int32 [num_classes, templates, L]."""
    from jldm.data import captions

    d, t = config.data, config.text
    try:
        k = captions.num_templates(d.name)
    except (KeyError, ValueError):
        raise UserError(
            f"model.conditioning=text needs captions, and dataset {d.name!r} has none: "
            "use digits or fashion_mnist, or model.conditioning=class"
        ) from None
    tok = text_tokenizer(config)
    rows = [
        tok.encode([captions.caption(d.name, c, j) for j in range(k)], t.max_length)[0]
        for c in range(d.num_classes)
    ]
    return np.stack(rows).astype(np.int32)


def condition_fn(
    config: ml_collections.ConfigDict,
) -> Callable[[int, np.ndarray], np.ndarray] | None:
    """None for class conditioning; for text, (step, labels [...]) -> token ids [..., L].

    Each example gets one of its class's caption templates, drawn from (seed, step), so a
    resumed run sees the same captions.
    """
    if config.model.get("conditioning", "class") != "text":
        return None
    table = caption_table(config)

    def fn(step: int, labels: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([config.seed, step])
        return table[labels, rng.integers(table.shape[1], size=labels.shape)]

    return fn
