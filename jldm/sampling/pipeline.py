"""The sampling pipeline of trained runs: conditions -> guided network -> sampler -> images.

One jitted function of (params, conditions, key, inputs): the params are arguments, not
constants baked into the program, so one compiled sampler serves every checkpoint of a run.
Images come out as floats in [0, 1] (uint8 on request).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jldm.build import objectives
from jldm.build import samplers as registry
from jldm.build.memory import check_sampling_fits
from jldm.build.model import model_shape, sr_factor, upsample
from jldm.build.ranges import check_guidance, check_seed
from jldm.diffusion.guidance import classifier_free_guidance
from jldm.errors import UserError
from jldm.runs.load import Loaded
from jldm.sampling.run import conditions, decode, encode_images, null_conditions


class Generator:
    """A compiled-on-demand sampler: gen(key) -> images [N,H,W,C] in [0, 1].

    gen.fn is the jitted (params, cond, key, inputs) -> images; gen.args(key) its arguments,
    so gen.fn.lower(*gen.args(key)).compile() times compilation apart from sampling.
    """

    def __init__(self, fn: Callable, params: Any, cond: jax.Array, inputs: dict):
        self.fn, self.params, self.cond, self.inputs = fn, params, cond, inputs

    def args(self, key: jax.Array) -> tuple:
        return self.params, self.cond, key, self.inputs

    def __call__(self, key: jax.Array) -> jax.Array:
        return self.fn(*self.args(key))


def _objective_and_sampler(run: Loaded, sampler: str, steps: int):
    objective = objectives.REGISTRY[run.config.diffusion.objective]
    registry.check_sampler(objective, sampler)
    chosen = registry.get(sampler)
    registry.check_steps(chosen, run.config, steps)
    return objective, chosen


def make_generator(
    run: Loaded,
    cond: np.ndarray,
    *,
    sampler: str,
    steps: int,
    guidance: float = 1.0,
    eta: float = 0.0,
    known: tuple[np.ndarray, np.ndarray] | None = None,
    low_res: np.ndarray | None = None,
    null: np.ndarray | None = None,
    size: tuple[int, int] | None = None,
    z: np.ndarray | None = None,
    split: int = 1,
) -> Generator:
    """The sampler key -> images [N,H,W,C] in [0, 1] for conditions cond ([N] or [N, L]).

    known: (images [N,H,W,C] in [-1, 1], mask [N,H,W,1], 1 = keep) for inpainting, with the
    samplers that inpaint (Sampler.inpaints). low_res: [N, R/f, R/f, C] in [-1, 1], the images a
    super-resolution run (model.low_res_factor = f) sharpens. null: the unconditional branch's
    conditions, cond's shape (None: the null class or the empty prompt; e.g. negative prompts'
    token ids). size: (H, W) of the images (None: the run's square resolution). z: the start's
    unit-normal draw [N, h, w, c] where the UNet works (None: drawn from the key). split: the
    number of devices the N samples are divided over (the size check is per device).
    """
    if not np.isfinite(eta):
        raise UserError(f"eta={eta} is not a number: pass a finite --eta")
    check_guidance(guidance)
    objective, chosen = _objective_and_sampler(run, sampler, steps)
    config = run.config
    check_fits(run, len(cond), guidance, size, split)
    cond = jnp.asarray(cond, jnp.int32)
    shape = (cond.shape[0], *_model_size(run, size), model_shape(config)[1])
    inputs = {}
    if z is not None:
        if tuple(np.shape(z)) != shape:
            raise UserError(f"start noise z of shape {tuple(np.shape(z))}: expected {shape}")
        inputs["z"] = jnp.asarray(z, jnp.float32)
    if known is not None:
        if not chosen.inpaints:
            inpainting = [n for n, x in registry.REGISTRY.items() if x.inpaints]
            raise UserError(
                f"inpainting runs with the samplers {', '.join(inpainting)}, not {sampler!r}"
            )
        inputs["known"] = _known_in_model_space(run, known, shape)
    low = _low_res_input(config, low_res, shape)
    if low is not None:
        inputs["low_res"] = low
    net = objectives.make_net(config, run.model)
    if null is None:
        null = null_conditions(run, np.asarray(cond))
    elif np.shape(null) != cond.shape:
        raise UserError(
            f"{np.shape(null)[0]} negative conditions for {cond.shape[0]}: pass one each"
        )
    null = jnp.asarray(null, jnp.int32)
    stage1 = run.stage1
    clip = stage1 is None  # latents are not confined to [-1, 1]

    sample = chosen.build(registry.Plan(config, shape, steps, eta, clip))

    def go(params, cond, key, inputs):
        def apply_fn(x, c, y):
            if "low_res" in inputs:
                reps = x.shape[0] // inputs["low_res"].shape[0]  # guidance doubles the batch
                x = jnp.concatenate([x, jnp.tile(inputs["low_res"], (reps, 1, 1, 1))], axis=-1)
            return net(params["unet"], x, c, y)

        fn = classifier_free_guidance(apply_fn, cond, null, guidance)
        x = sample(fn, key, inputs.get("known"), inputs.get("z"))
        x = decode(stage1, params["stage1"], x)
        return jnp.clip(x / 2 + 0.5, 0.0, 1.0)

    params = {"unet": run.params, "stage1": None if stage1 is None else stage1.params}
    return Generator(jax.jit(go), params, cond, inputs)


def check_fits(
    run: Loaded, n: int, guidance: float, size: tuple[int, int] | None = None, split: int = 1
) -> None:
    """n samples of run in one call, split over `split` devices, must leave the network room
    on a device: refused before anything of their size is allocated."""
    h, w = _model_size(run, size)
    height, width = size or (run.config.data.resolution,) * 2
    what = f"{n} sample{'s' if n != 1 else ''} of {height}x{width}"
    fix = "sample fewer or smaller images at once (sample.py --batch_size B --num N: in batches)"
    check_sampling_fits(run.model.unet, -(-n // split), h, w, guidance != 1.0, what, fix)


def _model_size(run: Loaded, size: tuple[int, int] | None) -> tuple[int, int]:
    """(h, w) where the UNet works for images of size (H, W) (None: the run's resolution)."""
    res, _ = model_shape(run.config)
    if size is None:
        return res, res
    f = run.config.data.resolution // res  # the autoencoder's factor (1 on pixels)
    multiple = f * 2 ** (len(run.model.unet["channel_mult"]) - 1)
    h, w = (int(v) for v in size)
    if h <= 0 or w <= 0 or h % multiple or w % multiple:
        raise UserError(f"--height={h} --width={w}: both must be positive multiples of {multiple}")
    return h // f, w // f


def _low_res_input(config, low_res, shape):
    """The upsampled low-resolution input of a super-resolution run [N,R,R,C], else None."""
    f = sr_factor(config)
    if f == 1:
        if low_res is not None:
            raise UserError("this run is not a super-resolution run: drop --low_res")
        return None
    want = (shape[0], shape[1] // f, shape[2] // f, shape[3])
    if low_res is None or tuple(np.shape(low_res)) != want:
        got = None if low_res is None else tuple(np.shape(low_res))
        raise UserError(f"super-resolution needs low-resolution images of shape {want}, got {got}")
    if not np.isfinite(low_res).all():
        raise UserError("the low-resolution images hold NaN or inf: pass finite pixels")
    return upsample(jnp.asarray(low_res, jnp.float32), shape[1])


def _known_in_model_space(run: Loaded, known, shape) -> tuple[jax.Array, jax.Array]:
    """(images, mask) in pixels -> (x0, mask) where the UNet works (latent-resolution mask)."""
    images, mask = (np.asarray(a, np.float32) for a in known)
    d = run.config.data
    want = (shape[0], d.resolution, d.resolution, d.channels)
    if images.shape != want:
        raise UserError(f"inpainting source of shape {images.shape}: expected {want}")
    if mask.shape not in (want[:3] + (1,), want):
        raise UserError(
            f"inpainting mask of shape {mask.shape}: expected {want[:3] + (1,)} (1 = keep)"
        )
    if not (np.isfinite(images).all() and np.isfinite(mask).all()):
        raise UserError("the inpainting source or mask holds NaN or inf: pass finite pixels")
    x0 = encode_images(run, images)
    if run.stage1 is not None:
        # A latent is kept only where its whole pixel footprint is known.
        f = d.resolution // shape[1]
        m = mask.min(axis=-1, keepdims=True).reshape(shape[0], shape[1], f, shape[2], f, 1)
        mask = m.min(axis=(2, 4))
    return jnp.asarray(x0), jnp.asarray(mask)


def generate(
    run: Loaded,
    *,
    labels: np.ndarray | None = None,
    prompts: list[str] | None = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    eta: float | None = None,
    seed: int = 0,
    known: tuple[np.ndarray, np.ndarray] | None = None,
    low_res: np.ndarray | None = None,
    negative_prompts: list[str] | None = None,
    size: tuple[int, int] | None = None,
    uint8: bool = False,
) -> np.ndarray:
    """Samples for class labels [N] or text prompts (N strings) -> images [N,H,W,C] in [0, 1].

    sampler, steps, guidance, eta: None takes the run's config.sample values (steps: the
    sampler's default). negative_prompts: one per prompt, the unconditional branch's (None:
    the empty prompt). size: (H, W) (None: the run's resolution). uint8: round to 8-bit images
    [N,H,W,C] uint8 instead of floats. Raises UserError when a sample is not finite.
    """
    s = run.config.sample
    sampler = sampler or s.sampler
    steps = registry.get(sampler).default_steps(run.config) if steps is None else steps
    cond = conditions(run, labels, prompts)
    null = None
    if negative_prompts is not None:
        if prompts is None or len(negative_prompts) != len(prompts):
            n = 0 if prompts is None else len(prompts)
            raise UserError(
                f"{len(negative_prompts)} negative prompts for {n} prompts: pass one per prompt"
            )
        null = conditions(run, prompts=list(negative_prompts))
    gen = make_generator(
        run,
        cond,
        sampler=sampler,
        steps=steps,
        guidance=s.guidance if guidance is None else guidance,
        eta=s.eta if eta is None else eta,
        known=known,
        low_res=low_res,
        null=null,
        size=size,
    )
    raw = gen(jax.random.PRNGKey(check_seed(seed)))
    images = np.asarray(raw)
    if not np.isfinite(images).all():
        raise UserError(
            f"{sampler} produced non-finite samples: the run may have diverged, or lower "
            "--guidance / change --sampler"
            + (" / raise --steps (its step attempts)" if sampler == "ode_adaptive" else "")
        )
    return np.round(images * 255.0).astype(np.uint8) if uint8 else images
