"""jldm: diffusion and score-based generative models in JAX/Flax."""

from jldm.api import Loaded, generate, load

__all__ = ["Loaded", "generate", "load"]
