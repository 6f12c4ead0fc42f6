"""Captions for the class-labelled datasets, and a word-level tokenizer built from them offline.

Text-conditional training on digits or Fashion-MNIST turns each label into one of several
templated captions; the tokenizer's vocabulary is exactly the caption words plus <pad>, <bos>,
<eos>, <unk>, so it needs no download and stays tiny.
"""

import json
import os
import warnings
from collections.abc import Iterable, Sequence

import jax
import numpy as np

from jldm.errors import UserError, missing_extra

try:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
except ImportError as e:  # the [sd] extra's packages; core jldm trains without text
    raise missing_extra(e, "text conditioning") from e

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = (
    "a handwritten digit {word}",
    "a drawing of the number {num}",
    "the digit {num}",
    "a handwritten {word}",
    "the number {word} written by hand",
    "a small picture of the digit {word}",
)

# (bare noun, noun with article) per Fashion-MNIST label, in the dataset's label order.
FASHION_NOUNS = (
    ("t-shirt", "a t-shirt"),
    ("trousers", "a pair of trousers"),
    ("pullover", "a pullover"),
    ("dress", "a dress"),
    ("coat", "a coat"),
    ("sandal", "a sandal"),
    ("shirt", "a shirt"),
    ("sneaker", "a sneaker"),
    ("bag", "a bag"),
    ("ankle boot", "an ankle boot"),
)
FASHION_TEMPLATES = (
    "{a}",
    "a photo of {a}",
    "a picture of {a}",
    "a black and white photo of {a}",
    "a product photo of {a}",
    "a {noun} on a plain background",
)

_TEMPLATES = {"digits": DIGIT_TEMPLATES, "fashion_mnist": FASHION_TEMPLATES}
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")


def _check(dataset: str, label: int) -> None:
    if dataset not in _TEMPLATES:
        raise ValueError(f"no captions for dataset {dataset!r}: use one of {sorted(_TEMPLATES)}")
    if not 0 <= label < 10:
        raise ValueError(f"label {label} out of range 0..9 for {dataset}")


def num_templates(dataset: str) -> int:
    """Number of caption templates for dataset ("digits" or "fashion_mnist")."""
    _check(dataset, 0)
    return len(_TEMPLATES[dataset])


def caption(dataset: str, label: int, template: int) -> str:
    """The caption of label under template index (taken modulo the number of templates)."""
    _check(dataset, int(label))
    label = int(label)
    t = _TEMPLATES[dataset][template % len(_TEMPLATES[dataset])]
    if dataset == "digits":
        return t.format(word=DIGIT_WORDS[label], num=label)
    noun, with_article = FASHION_NOUNS[label]
    return t.format(a=with_article, noun=noun)


def random_caption(dataset: str, label: int, key: jax.Array | int) -> str:
    """A caption of label under a template drawn from key (a JAX key or an int seed)."""
    return random_captions(dataset, np.asarray([label]), key)[0]


def random_captions(
    dataset: str, labels: Sequence[int] | np.ndarray, key: jax.Array | int
) -> list[str]:
    """One caption per label, templates drawn independently from key. labels: [B] -> B strings."""
    n = num_templates(dataset)
    labels = np.asarray(labels).reshape(-1)
    if isinstance(key, int):
        templates = np.random.default_rng(key).integers(0, n, labels.shape[0])
    else:
        templates = np.asarray(jax.random.randint(key, (labels.shape[0],), 0, n))
    return [caption(dataset, int(y), int(t)) for y, t in zip(labels, templates, strict=True)]


def all_captions(datasets: Iterable[str] = tuple(_TEMPLATES)) -> list[str]:
    """Every (label, template) caption of the given datasets (default: all with captions)."""
    return [
        caption(d, label, t)
        for d in datasets
        for label in range(10)
        for t in range(num_templates(d))
    ]


class CaptionTokenizer:
    """A transformers tokenizer behind one interface: the captions' word-level one (lowercase,
    whitespace and punctuation split; encode adds <bos> ... <eos> and pads with <pad> on the
    right), or a pretrained pipeline's (CLIP's BPE), loaded from its folder."""

    def __init__(self, tokenizer: PreTrainedTokenizerFast):
        self.hf = tokenizer

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return len(self.hf)

    @property
    def pad_id(self) -> int:
        """Id of <pad> (0)."""
        return self.hf.pad_token_id

    @property
    def bos_id(self) -> int:
        """Id of <bos>."""
        return self.hf.bos_token_id

    @property
    def eos_id(self) -> int:
        """Id of <eos>: pass it to CLIPTextEncoder(eos_token_id=...) for pooling."""
        return self.hf.eos_token_id

    def encode(
        self, prompts: Sequence[str] | str, max_length: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """prompts (B strings) -> ids int32 [B, max_length], mask int32 [B, max_length].

        A prompt longer than max_length tokens (with <bos> and <eos>) is cut to max_length, keeping
        <eos> last, and a warning names its length.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        lengths = [len(ids) for ids in self.hf(prompts)["input_ids"]]
        long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
        if long:
            shown = ", ".join(f"prompt {i}: {n} tokens" for i, n in long[:5])
            warnings.warn(
                f"{len(long)} prompt(s) longer than max_length={max_length}, truncated ({shown})",
                stacklevel=2,
            )
        out = self.hf(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=max_length,
            return_tensors="np",
        )
        return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)

    def unknown_words(self, prompts: Sequence[str]) -> list[list[str]]:
        """For each prompt, its words (as written) that become the unknown token."""
        unk = self.hf.unk_token_id
        if unk is None or not prompts:
            return [[] for _ in prompts]
        out = []
        for prompt, enc in zip(prompts, self.hf(list(prompts)).encodings, strict=True):
            # A tokenizer whose unknown token is also its end token (CLIP's) adds it to every
            # prompt: only tokens read from the prompt's own text count.
            read = zip(enc.ids, enc.offsets, enc.special_tokens_mask, strict=True)
            out.append([prompt[a:b] for i, (a, b), added in read if i == unk and not added])
        return out

    def decode(self, ids: np.ndarray) -> list[str]:
        """ids [B, L] -> B strings, special tokens dropped (punctuation comes back spaced)."""
        return self.hf.batch_decode(np.asarray(ids).tolist(), skip_special_tokens=True)

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer to a local folder (tokenizer.json + tokenizer_config.json)."""
        self.hf.save_pretrained(os.fspath(path))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CaptionTokenizer":
        """Read a tokenizer folder: one written by save, or a pretrained pipeline's (e.g. Stable
        Diffusion's CLIP tokenizer/ folder, vocab.json and merges.txt). Never touches the
        network."""
        path = os.fspath(path)
        files = [
            f for f in ("tokenizer.json", "vocab.json") if os.path.isfile(os.path.join(path, f))
        ]
        if not files:
            raise FileNotFoundError(
                f"no tokenizer.json in {path}: build_tokenizer().save({path!r})"
            )
        try:
            with open(os.path.join(path, "tokenizer_config.json")) as f:
                kind = json.load(f).get("tokenizer_class", "")
        except (OSError, ValueError):
            kind = ""
        # AutoTokenizer imports torch where it is installed (seconds); CLIP's class alone does not.
        if kind.startswith("CLIPTokenizer"):
            from transformers import CLIPTokenizer as loader
        elif "tokenizer.json" in files:
            loader = PreTrainedTokenizerFast
        else:
            from transformers import AutoTokenizer as loader
        try:
            return cls(loader.from_pretrained(path, local_files_only=True))
        except (OSError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise UserError(f"cannot load the tokenizer in {path} ({first})") from None


def build_tokenizer(captions: Iterable[str] | None = None) -> CaptionTokenizer:
    """Tokenizer whose vocabulary is the words of captions (default: all dataset captions)."""
    captions = all_captions() if captions is None else list(captions)
    normalizer = normalizers.Lowercase()
    pre = pre_tokenizers.Whitespace()
    words = sorted(
        {w for c in captions for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(c))}
    )
    # Special tokens first and words sorted, so the same captions always give the same ids.
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *words))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>",
        special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])],
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="right",
        truncation_side="right",
    )
    return CaptionTokenizer(hf)
