"""jldm: diffusion and score-based generative models in JAX/Flax."""

from jldm.api import Loaded, bits_per_dim, generate, load, make_generator

__all__ = ["Loaded", "bits_per_dim", "generate", "load", "make_generator"]
