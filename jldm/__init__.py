"""jldm: diffusion and score-based generative models in JAX/Flax."""

from jldm.api import (
    Loaded,
    bits_per_dim,
    decode,
    encode,
    generate,
    load,
    load_pretrained,
    make_generator,
    text_to_image,
    train,
)

__all__ = [
    "Loaded",
    "bits_per_dim",
    "decode",
    "encode",
    "generate",
    "load",
    "load_pretrained",
    "make_generator",
    "text_to_image",
    "train",
]
