"""Text-to-image with a pretrained Stable Diffusion folder (converted by jldm.convert), loaded
as a run (jldm.runs.pretrained) and sampled by the one sampling pipeline
(jldm.sampling.pipeline): every registered sampler walks diffusers' timesteps of the folder's
scheduler, the text encoder conditions the UNet and the VAE decodes, in one jitted function.
"""

import logging
import time
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from jldm.build import samplers
from jldm.convert.pipeline import load_pretrained
from jldm.errors import UserError
from jldm.runs.load import Loaded
from jldm.runs.pretrained import as_run, default_compute_dtype, load_pretrained_run
from jldm.sampling.pipeline import generate
from jldm.sampling.progress import running

logger = logging.getLogger(__name__)


def generate_text_to_image(
    run: Loaded,
    prompts: Sequence[str],
    *,
    negative_prompts: Sequence[str] | str = "",
    steps: int = 50,
    guidance: float = 7.5,
    sampler: str = "ddim",
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    num_per_prompt: int = 1,
    eta: float = 0.0,
) -> np.ndarray:
    """Images for prompts (each repeated num_per_prompt times): float32 [N, H, W, C] in [0, 1].

    negative_prompts: one string for all, or one per prompt; "" is the unconditional prompt.
    height/width default to the UNet's sample_size times the VAE factor (512 for SD 1.5).
    """
    if not prompts:
        raise UserError("no prompt: pass --prompt TEXT (repeat it for a batch)")
    if num_per_prompt < 1:
        raise UserError(f"--num={num_per_prompt} must be >= 1")
    if isinstance(negative_prompts, str):
        negative_prompts = [negative_prompts] * len(prompts)
    if len(negative_prompts) != len(prompts):
        raise UserError(
            f"{len(negative_prompts)} negative prompts for {len(prompts)} prompts: pass one, "
            "or one per prompt"
        )
    default = run.config.data.resolution
    rep = lambda xs: [p for p in xs for _ in range(num_per_prompt)]
    return generate(
        run,
        prompts=rep(prompts),
        negative_prompts=rep(negative_prompts),
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        eta=eta,
        seed=seed,
        size=(height or default, width or default),
    )


def load(root: str, *, cache: str | bool = True, dtype=None) -> Loaded:
    """A diffusers SD folder converted (or restored from its Orbax cache) as a run."""
    return load_pretrained_run(root, cache=cache, dtype=dtype)


def sample_pretrained(
    root: str,
    prompts: Sequence[str],
    out: str,
    *,
    cache: str | bool = True,
    precision: str = "auto",
    **options,
) -> None:
    """sample.py --pretrained: write OUT.png (one row per prompt) and OUT.npz (images, prompts).

    OUT may be a cloud prefix (gs://...): each file is then one object. options: those of
    generate_text_to_image.
    """
    from jldm.data.paths import dirname, makedirs
    from jldm.eval import save_grid
    from jldm.sampling.shards import save_npz
    from jldm.temporaries import together

    # Mistakes that need no weights are reported before the (slow) load.
    sampler, steps = options.get("sampler", "ddim"), options.get("steps", 50)
    samplers.get(sampler)
    if steps < 1:
        raise UserError(f"--steps={steps} must be >= 1")
    if not prompts:
        raise UserError("no prompt: pass --prompt TEXT (repeat it for a batch)")
    dtypes = {"auto": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}
    dtype = dtypes[precision] or default_compute_dtype()
    pipe = load_pretrained(root, cache=cache, dtype=dtype)
    how = "converted" if pipe.source == "converted" else "loaded from the Orbax cache"
    logger.info("%s %s in %.1f s", how, pipe.root, pipe.load_seconds)
    t0 = time.perf_counter()
    with running(f"sampling {len(prompts)} prompts, {sampler} {steps} steps"):
        images = generate_text_to_image(as_run(pipe), prompts, **options)
    seconds = time.perf_counter() - t0
    makedirs(dirname(out) or ".")
    per_prompt = options.get("num_per_prompt", 1)
    per_image = [p for p in prompts for _ in range(per_prompt)]
    with together():  # a grid and its .npz are replaced both or neither
        save_grid(images, out + ".png", ncols=per_prompt)
        save_npz(out + ".npz", images=images, prompts=np.asarray(per_image))
    logger.info(
        "%d images %dx%d, %s %d steps, guidance %s, %s, %.1f s incl. compile",
        images.shape[0],
        images.shape[1],
        images.shape[2],
        sampler,
        steps,
        options.get("guidance", 7.5),
        jnp.dtype(dtype).name,
        seconds,
    )
    logger.info("samples: %s.png %s.npz", out, out)
