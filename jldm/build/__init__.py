"""Config -> model, noise process, objective, sampler and abstract state (the registries)."""

import ml_collections

from jldm.build import objectives, samplers
from jldm.build.model import build_model, init_params, is_latent, model_shape
from jldm.build.noise import build_schedule, build_sde
from jldm.build.state import TrainState, abstract_state, create_state, make_optimizer


def unet_state_shapes(config: ml_collections.ConfigDict, model) -> TrainState:
    """Shapes and dtypes of the UNet's TrainState for config, without allocating it."""
    init = lambda k: init_params(model, config, k)
    return abstract_state(init, make_optimizer(config.train), config.seed)


__all__ = [
    "TrainState",
    "abstract_state",
    "build_model",
    "build_schedule",
    "build_sde",
    "create_state",
    "init_params",
    "is_latent",
    "make_optimizer",
    "model_shape",
    "objectives",
    "samplers",
    "unet_state_shapes",
]
