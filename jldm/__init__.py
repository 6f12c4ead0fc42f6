"""jldm: diffusion and score-based generative models in JAX/Flax."""

import sys
import types

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


class _Package(types.ModuleType):
    """jldm itself. jldm.train is the training function: importing the jldm.train subpackage
    (the training loop's modules, reached as `from jldm.train.fit import ...`) does not rebind
    it, so jldm.train(config, workdir) works however often and whatever was imported before."""

    def __setattr__(self, name: str, value) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
