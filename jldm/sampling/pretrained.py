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
from jldm.convert.folder import component_dir
from jldm.convert.pipeline import Pretrained, load_pretrained
from jldm.convert.scheduler import inference_pairs
from jldm.diffusion.samplers import classifier_free_guidance
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
    the ancestral noise. Every sampler walks diffusers' DDIM timestep grid:
    ddim: DDIM with eta; ddpm: ancestral sampling (DDIM with eta = 1 and alpha_bar = 1 after
    the last step, which is the DDPM posterior); pc: corrector_steps Langevin steps at signal-
    to-noise snr (score -eps_hat / sqrt(1 - alpha_bar)) before each ancestral step; ode: the
    probability-flow ODE by Heun's method (see heun_step), 2 evaluations a step.
    """
    chosen = samplers.get_for_grid(sampler)
    f = pipe.vae.factor
    # The UNet halves the latents once per level but the last and has no resizing of its own.
    multiple = f * 2 ** (len(pipe.unet.model.channel_mult) - 1)
    if height % multiple or width % multiple or height <= 0 or width <= 0:
        raise UserError(
            f"--height={height} --width={width}: both must be positive multiples of {multiple}"
        )
    sched = pipe.scheduler
    pairs = inference_pairs(sched, steps, alpha_one_at_end=chosen.ancestral)
    eta = 1.0 if chosen.ancestral else eta
    shape = (batch, height // f, width // f, pipe.unet.in_channels)
    unet, vae, text = pipe.unet.model, pipe.vae.model, pipe.text_encoder
    scale = pipe.vae.scaling_factor

    def run(params, ids, null_ids, key, x_T):
        encode = lambda i: text.apply({"params": params["text_encoder"]}, i).last_hidden_state
        ctx, null = encode(ids), encode(null_ids)
        apply_fn = lambda x, t, c: unet.apply({"params": params["unet"]}, x, t, c)
        model_fn = classifier_free_guidance(apply_fn, ctx, null, guidance)
        plan = samplers.GridPlan(
            model_fn,
            sched.schedule,
            sched.prediction,
            sched.clip_sample,
            shape,
            eta,
            snr,
            corrector_steps,
        )
        step = chosen.grid(plan)
        x, _ = jax.lax.scan(
            lambda x, tt: (step(key, x, tt[0], tt[1]), None), x_T, jnp.asarray(pairs)
        )
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
    samplers.get_for_grid(sampler)
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
