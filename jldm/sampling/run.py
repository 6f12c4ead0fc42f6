"""What sampling needs of a trained run (a jldm.runs.load.Loaded): its conditions, latents."""

import logging

import jax
import ml_collections
import numpy as np

from jldm.build.model import null_condition
from jldm.build.text import caption_table, text_tokenizer
from jldm.errors import UserError
from jldm.runs.load import Loaded, Stage1

logger = logging.getLogger(__name__)


def class_ids(labels, num_classes: int, what: str = "labels") -> np.ndarray:
    """labels as int32 [N]: integers (integral floats too) in 0..num_classes - 1, else refused."""
    a = np.asarray(labels)
    if a.ndim != 1:
        raise UserError(f"{what} of shape {a.shape}: pass one class id per sample, shape [N]")
    if a.dtype.kind == "f" and not (np.isfinite(a).all() and (a == np.round(a)).all()):
        raise UserError(f"{what} {a[:8].tolist()} are not whole numbers: pass class ids")
    if a.dtype.kind not in "iuf" and a.size:
        raise UserError(f"{what} of dtype {a.dtype}: pass integer class ids")
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        raise UserError(f"{what} has {a.min():g}..{a.max():g}: class ids are 0..{num_classes - 1}")
    return a.astype(np.int32)


def _report_unknown_words(tokenizer, prompts: list[str]) -> None:
    """A warning for each prompt with words the tokenizer reads as its unknown token."""
    for prompt, words in zip(prompts, tokenizer.unknown_words(prompts), strict=True):
        if words:
            logger.warning(
                f"warning: prompt {prompt!r}: {', '.join(map(repr, words))} not in the run's "
                "vocabulary, read as <unk> (a token its training never showed)"
            )


def is_text(config: ml_collections.ConfigDict) -> bool:
    """A run conditioned on token ids (captions, prompts) rather than class ids."""
    return config.model.get("conditioning", "class") == "text"


def conditions(
    run: Loaded, labels: np.ndarray | None = None, prompts: list[str] | None = None
) -> np.ndarray:
    """The UNet's conditions: class ids [N], or token ids [N, L] for a text-conditional run.

    A text run given labels uses each class's first caption template; a class run refuses
    prompts.
    """
    config = run.config
    if (labels is None) == (prompts is None):
        raise UserError("pass either class labels or prompts")
    if prompts is not None:
        if not is_text(config):
            raise UserError("this run is class-conditional: pass --classes instead of --prompt")
        tokenizer = text_tokenizer(config)
        _report_unknown_words(tokenizer, list(prompts))
        return tokenizer.encode(list(prompts), config.text.max_length)[0]
    labels = class_ids(labels, config.data.num_classes)
    if is_text(config):
        return caption_table(config)[labels, 0]
    return labels


def null_conditions(run: Loaded, cond: np.ndarray) -> np.ndarray:
    """The unconditional input broadcast to the conditions' shape [N] or [N, L]."""
    return np.broadcast_to(np.asarray(null_condition(run.config), np.int32), cond.shape)


def encode(stage1: Stage1, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Images [N,H,W,C] in [-1, 1] -> unscaled posterior means [N, H/f, W/f, latent], float32."""
    ae = stage1.model
    fn = jax.jit(lambda p, x: ae.apply({"params": p}, x, method=ae.encode).mean)
    images = np.asarray(images, np.float32)
    return np.concatenate(
        [np.asarray(fn(stage1.params, images[i : i + batch])) for i in range(0, len(images), batch)]
    )


def encode_images(run: Loaded, images: np.ndarray) -> np.ndarray:
    """Images [N,H,W,C] in [-1, 1] -> what the UNet denoises (scaled latents for an LDM)."""
    if run.stage1 is None:
        return np.asarray(images, np.float32)
    return encode(run.stage1, images) * run.stage1.scale


def decode(stage1: Stage1 | None, params, x: jax.Array) -> jax.Array:
    """What the UNet denoises -> images [N,H,W,C] in about [-1, 1] (decoded for an LDM)."""
    if stage1 is None:
        return x
    ae = stage1.model
    return ae.apply({"params": params}, x / stage1.scale, method=ae.decode)
