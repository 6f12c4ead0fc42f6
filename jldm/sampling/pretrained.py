"""Text-to-image with a pretrained Stable Diffusion folder (converted by jldm.convert).

The whole pipeline (text encoder, classifier-free-guided sampling in one lax.scan, VAE decode)
is one jitted function of (params, token ids, key).
"""

import json
import os
import sys
import time
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jldm.build import samplers
from jldm.configs.default import get_config
from jldm.convert.folder import component_dir
from jldm.convert.pipeline import Pretrained, load_pretrained
from jldm.convert.scheduler import inference_pairs
from jldm.diffusion.frame import discrete_frame
from jldm.diffusion.guidance import classifier_free_guidance
from jldm.errors import UserError


def load_tokenizer(root: str):
    """The transformers tokenizer in DIR/tokenizer, from local files only."""
    folder = component_dir(root, "tokenizer")
    try:
        with open(os.path.join(folder, "tokenizer_config.json")) as f:
            cls = json.load(f).get("tokenizer_class", "")
    except (OSError, ValueError):
        cls = ""
    # AutoTokenizer imports torch where it is installed (seconds); CLIP's class alone does not.
    if cls.startswith("CLIPTokenizer"):
        from transformers import CLIPTokenizer as Tokenizer
    else:
        from transformers import AutoTokenizer as Tokenizer
    try:
        return Tokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load the tokenizer in {folder} ({first})") from None


def tokenize(tokenizer, prompts: Sequence[str], max_length: int) -> np.ndarray:
    """Prompts -> ids int32 [B, max_length], padded; longer prompts are cut with a warning."""
    prompts = list(prompts)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    long = [(i, n) for i, n in enumerate(lengths) if n > max_length]
    if long:
        shown = ", ".join(f"prompt {i}: {n} tokens" for i, n in long[:3])
        warnings.warn(
            f"{len(long)} prompt(s) longer than the tokenizer's {max_length} tokens were "
            f"truncated ({shown})",
            stacklevel=2,
        )
    out = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="np"
    )
    return out["input_ids"].astype(np.int32)


def token_length(tokenizer, pipe: Pretrained) -> int:
    """Tokens per prompt: the tokenizer's model_max_length, capped by the text encoder's."""
    n = int(getattr(tokenizer, "model_max_length", 0) or 0)
    limit = pipe.text_encoder.max_position_embeddings
    return limit if n <= 0 or n > limit else n


def default_compute_dtype() -> jnp.dtype:
    """bfloat16 on GPU/TPU, float32 on CPU (where bfloat16 is slow and only emulated)."""
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu", "cuda", "rocm") else jnp.float32


# The samplers that walk diffusers' DDIM timestep grid one pair (t, t_prev) at a time; those
# that draw noise end on alpha_bar = 1 (the clean estimate), as diffusers' DDPM does.
GRID_SAMPLERS = ("ddim", "euler", "ddpm", "heun", "pc", "em", "ode")
_TO_CLEAN = ("ddpm", "pc", "em")


def grid_sampler(name: str):
    """The registered sampler called name, refused unless it can walk the pretrained grid."""
    if name not in GRID_SAMPLERS:
        raise UserError(f"--sampler={name} with --pretrained: use one of {GRID_SAMPLERS}")
    return samplers.get(name)


def make_text_to_image(
    pipe: Pretrained,
    batch: int,
    height: int,
    width: int,
    *,
    steps: int = 50,
    guidance: float = 7.5,
    sampler: str = "ddim",
    eta: float = 0.0,
    snr: float = 0.16,
    corrector_steps: int = 1,
):
    """Jitted (params, ids [B,L], null_ids [B,L], key, x_T) -> images [B,H,W,C] in [0, 1].

    x_T: [B, H/f, W/f, latent channels], the starting latents (see initial_latents); key draws
    the samplers' noise. Each step (t, t_prev) of diffusers' DDIM timestep grid runs the
    registered sampler (jldm.build.samplers) over the two sigmas of t and t_prev in the EDM
    frame of the folder's schedule, x rescaled to each side's alpha_bar as diffusers does: ddim
    is DDIM with eta (diffusers' DDIMScheduler; a clipped x0 gives its noise estimate, as
    use_clipped_model_output=True), ddpm its ancestral step (eta = 1), heun and ode the
    probability-flow ODE by Heun's method and RK4, pc and em the reverse SDE (pc with
    corrector_steps Langevin steps at signal-to-noise snr).
    """
    chosen = grid_sampler(sampler)
    f = pipe.vae.factor
    # The UNet halves the latents once per level but the last and has no resizing of its own.
    multiple = f * 2 ** (len(pipe.unet.model.channel_mult) - 1)
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise UserError(
            f"--height={height} --width={width}: both must be positive multiples of {multiple}"
        )
    sched = pipe.scheduler
    pairs = inference_pairs(sched, steps, alpha_one_at_end=True if sampler in _TO_CLEAN else None)
    frame = discrete_frame(sched.schedule, sched.prediction, sched.clip_sample)
    abar = np.append(np.asarray(sched.schedule.alphas_cumprod, np.float64), 1.0)  # [-1]: 1
    scales = np.sqrt(abar[pairs])  # x = sqrt(abar) xbar at t and t_prev
    sigmas = np.sqrt(1.0 / abar[pairs] - 1.0)
    settings = get_config()
    settings.sample.update(snr=snr, corrector_steps=corrector_steps)
    solve = chosen.solver(settings, eta, frame)
    unet, vae, text = pipe.unet.model, pipe.vae.model, pipe.text_encoder
    scale = pipe.vae.scaling_factor

    def run(params, ids, null_ids, key, x_T):
        encode = lambda i: text.apply({"params": params["text_encoder"]}, i).last_hidden_state
        ctx, null = encode(ids), encode(null_ids)
        apply_fn = lambda x, t, c: unet.apply({"params": params["unet"]}, x, t, c)
        d = frame.denoiser(classifier_free_guidance(apply_fn, ctx, null, guidance))

        def step(x, inp):
            i, (s_t, s_prev), (a_t, a_prev) = inp
            xbar = solve(d, x / a_t, jnp.stack([s_t, s_prev]), jax.random.fold_in(key, i), None)
            return xbar * a_prev, None

        inputs = (jnp.arange(len(pairs)), jnp.asarray(sigmas, jnp.float32))
        x, _ = jax.lax.scan(step, x_T, (*inputs, jnp.asarray(scales, jnp.float32)))
        images = vae.apply({"params": params["vae"]}, x / scale, method=vae.decode)
        return jnp.clip(images / 2 + 0.5, 0.0, 1.0)

    return jax.jit(run)


def initial_latents(pipe: Pretrained, key: jax.Array, batch: int, height: int, width: int):
    """x_T ~ N(0, I): [B, H/f, W/f, latent channels] (DDIM's initial noise sigma is 1)."""
    f = pipe.vae.factor
    return jax.random.normal(key, (batch, height // f, width // f, pipe.unet.in_channels))


def generate_text_to_image(
    pipe: Pretrained,
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
    tokenizer=None,
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
    default = pipe.unet.sample_size * pipe.vae.factor
    height, width = height or default, width or default
    tokenizer = tokenizer or load_tokenizer(pipe.root)
    n = token_length(tokenizer, pipe)
    rep = lambda xs: [p for p in xs for _ in range(num_per_prompt)]
    ids = tokenize(tokenizer, rep(prompts), n)
    null_ids = tokenize(tokenizer, rep(negative_prompts), n)
    go = make_text_to_image(
        pipe, ids.shape[0], height, width, steps=steps, guidance=guidance, sampler=sampler, eta=eta
    )
    k_init, k_steps = jax.random.split(jax.random.PRNGKey(seed))
    x_T = initial_latents(pipe, k_init, ids.shape[0], height, width)
    return np.asarray(go(pipe.params, ids, null_ids, k_steps, x_T))


def load(root: str, *, cache: str | bool = True, dtype=None) -> Pretrained:
    """A diffusers SD folder converted (or restored from its Orbax cache) for sampling."""
    return load_pretrained(root, cache=cache, dtype=dtype or default_compute_dtype())


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

    # Mistakes that need no weights are reported before the (slow) load.
    sampler, steps = options.get("sampler", "ddim"), options.get("steps", 50)
    grid_sampler(sampler)
    if steps < 1:
        raise UserError(f"--steps={steps} must be >= 1")
    if not prompts:
        raise UserError("no prompt: pass --prompt TEXT (repeat it for a batch)")
    dtypes = {"auto": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}
    dtype = dtypes[precision] or default_compute_dtype()
    pipe = load_pretrained(root, cache=cache, dtype=dtype)
    how = "converted" if pipe.source == "converted" else "loaded from the Orbax cache"
    print(f"{how} {pipe.root} in {pipe.load_seconds:.1f} s")
    t0 = time.perf_counter()
    images = generate_text_to_image(pipe, prompts, tokenizer=load_tokenizer(pipe.root), **options)
    seconds = time.perf_counter() - t0
    makedirs(dirname(out) or ".")
    per_prompt = options.get("num_per_prompt", 1)
    save_grid(images, out + ".png", ncols=per_prompt)
    per_image = [p for p in prompts for _ in range(per_prompt)]
    save_npz(out + ".npz", images=images, prompts=np.asarray(per_image))
    print(
        f"{images.shape[0]} images {images.shape[1]}x{images.shape[2]}, {sampler} {steps} steps, "
        f"guidance {options.get('guidance', 7.5)}, {jnp.dtype(dtype).name}, "
        f"{seconds:.1f} s incl. compile",
        file=sys.stdout,
    )
    print(f"samples: {out}.png {out}.npz")
