"""The sampling pipeline: trained runs (pipeline) and pretrained Stable Diffusion folders."""

from jldm.runs.load import Loaded, Stage1
from jldm.sampling.likelihood import bits_per_dim
from jldm.sampling.pipeline import Generator, generate, make_generator
from jldm.sampling.run import conditions, decode, encode_images

__all__ = [
    "Generator",
    "Loaded",
    "Stage1",
    "bits_per_dim",
    "conditions",
    "decode",
    "encode_images",
    "generate",
    "make_generator",
]
