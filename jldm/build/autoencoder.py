"""Config -> the stage-1 networks of latent diffusion: the KL autoencoder and its discriminator."""

import jax
import jax.numpy as jnp
import ml_collections

from jldm.build.model import check_groups
from jldm.errors import UserError
from jldm.nn.autoencoder import AutoencoderKL
from jldm.nn.discriminator import PatchDiscriminator


def build_autoencoder(config: ml_collections.ConfigDict) -> AutoencoderKL:
    """The AutoencoderKL of config.stage1 for config.data's channels."""
    a = config.stage1
    check_groups("stage1", a.channels, a.channel_mult, a.norm_groups)
    return AutoencoderKL(
        out_channels=config.data.channels,
        latent_channels=a.latent_channels,
        channels=a.channels,
        channel_mult=tuple(a.channel_mult),
        num_res_blocks=a.num_res_blocks,
        norm_groups=a.norm_groups,
    )


def build_discriminator(config: ml_collections.ConfigDict) -> PatchDiscriminator:
    """The patch discriminator of config.stage1."""
    a = config.stage1
    if config.data.resolution // 2**a.disc_layers - 2 < 1:
        raise UserError(
            f"stage1.disc_layers={a.disc_layers} leaves no patch at data.resolution="
            f"{config.data.resolution} (each layer halves it, the last two convs trim 2): "
            "use fewer layers"
        )
    return PatchDiscriminator(channels=a.disc_channels, n_layers=a.disc_layers)


def init_stage1(config: ml_collections.ConfigDict, key: jax.Array) -> dict:
    """Fresh {"ae": autoencoder params, "disc": discriminator params}."""
    d = config.data
    x = jnp.zeros((1, d.resolution, d.resolution, d.channels), jnp.float32)
    k_ae, k_disc = jax.random.split(key)
    ae = build_autoencoder(config).init(k_ae, x)["params"]
    disc = build_discriminator(config).init(k_disc, x)["params"]
    return {"ae": ae, "disc": disc}
