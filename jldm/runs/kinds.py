"""The kinds of run, told apart by their config: the one place that reads which kind it is.

pixel: diffusion on pixels. latent: diffusion on the latents of a stage-1 autoencoder (the
config has a `stage1` section). vae: a VAE trained by its ELBO and sampled from its prior (a
`vae` section). toy: score models of an exact 2-D density (data.name toy_*).
It imports nothing of jldm, so every layer from jldm.build up can ask it.
"""

import ml_collections

KINDS = ("pixel", "latent", "vae", "toy")


def kind_of(config: ml_collections.ConfigDict) -> str:
    """The kind of run config describes: one of KINDS."""
    # Toy first: its data names no image dataset, whatever other sections the config carries.
    if config.data.name.startswith("toy"):
        return "toy"
    if "vae" in config:
        return "vae"
    if "stage1" in config:
        return "latent"
    return "pixel"
