"""jldm's benchmark programs (no flags): random inputs on the mesh, one UNet evaluation, the
training loop's jitted step and the samplers. Shared by bench/unet.py and bench/vs_diffusers.py.

Each builder returns a jitted function and its arguments, so the caller lowers and compiles
it apart from the timed calls. With abstract=True nothing is allocated: arguments are
ShapeDtypeStructs that carry their shardings (enough to lower, compile and count FLOPs).
"""

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from jldm import api
from jldm.build import unet_state_shapes
from jldm.build.model import init_params
from jldm.build.noise import build_schedule
from jldm.build.objectives import build_loss
from jldm.build.state import TrainState, create_state, make_optimizer
from jldm.train.sharding import batch_sharding, replicated, state_sharding
from jldm.train.step import make_train_step, make_update


def abstract(tree, shardings):
    """ShapeDtypeStructs carrying shardings: what jit needs to lower, with nothing allocated."""
    return jax.tree_util.tree_map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), tree, shardings
    )


def inputs(config, batch: int, mesh, lead: tuple[int, ...] = (), seed: int = 0):
    """Random x [*lead, B, H, W, C] in [-1, 1], timesteps and labels [*lead, B], the batch axis
    split over the mesh."""
    d = config.data
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
    shape = (*lead, batch, d.resolution, d.resolution, d.channels)
    x = jax.random.uniform(k1, shape, minval=-1.0, maxval=1.0)
    t = jax.random.randint(k2, (*lead, batch), 0, config.diffusion.timesteps)
    y = jax.random.randint(k3, (*lead, batch), 0, d.num_classes)
    return jax.device_put((x, t, y), batch_sharding(mesh, batch_axis=len(lead)))


# For programs that run once: unoptimised machine code compiles about twice as fast.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def peak_bytes() -> int | None:
    """The allocator's peak bytes in use on device 0 since the process started (GPU/TPU), or
    None where the backend reports none (the CPU)."""
    stats = jax.devices()[0].memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def random_params(config, model, mesh, abstract_params: bool = False):
    """The model's initial params for config.seed, replicated over the mesh (or their
    ShapeDtypeStructs). Its init program runs once, so it is compiled without optimisation."""
    rep = replicated(mesh)
    init = jax.jit(lambda k: init_params(model, config, k), out_shardings=rep)
    key = jax.random.PRNGKey(config.seed)
    if abstract_params:
        shapes = jax.eval_shape(init, key)
        return abstract(shapes, jax.tree_util.tree_map(lambda _: rep, shapes))
    return init.lower(key).compile(compiler_options=FAST_COMPILE)(key)


def eval_program(config, model, mesh, batch: int, abstract_params: bool = False, params=None):
    """One UNet evaluation, the batch split over the mesh (what a sampling step costs).

    -> (jitted fn, (params, x, t, labels)); params (random_params unless given) replicated.
    """
    if params is None:
        params = random_params(config, model, mesh, abstract_params)
    fn = jax.jit(lambda p, x, t, y: model.apply({"params": p}, x, t, y))
    return fn, (params, *inputs(config, batch, mesh))


@dataclasses.dataclass
class TrainProgram:
    """The loop's train step (train.steps_per_call fused steps) and what it runs on."""

    step: Callable  # jitted (state, batches) -> (state, metrics); donates state
    state: TrainState  # arrays, or ShapeDtypeStructs when built abstract
    batches: dict  # {"image": [k, B, H, W, C], "label": [k, B]}
    shapes: TrainState
    shardings: TrainState
    loss_fn: Callable


def train_program(config, model, mesh, batch: int, abstract_state: bool = False, params=None):
    """The step jldm.train runs: forward, backward, clip, AdamW and EMA, data parallel over the
    mesh (params split over it with train.shard_params); the state starts from params
    (random_params unless given). -> TrainProgram."""
    tx = make_optimizer(config.train)
    shapes = unet_state_shapes(config, model)
    shardings = state_sharding(shapes, mesh, config.train.shard_params)
    if abstract_state:
        state = abstract(shapes, shardings)
    else:
        params = random_params(config, model, mesh) if params is None else params
        make = lambda p: create_state(lambda _: p, tx, config.seed)
        state = jax.jit(make, out_shardings=shardings)(params)
    x, _, y = inputs(config, batch, mesh, lead=(config.train.steps_per_call,))
    loss_fn = build_loss(config, model)
    update = make_update(loss_fn, tx, config.train.ema_decay, False, shardings.params)
    step = make_train_step(update, mesh, shardings)
    return TrainProgram(step, state, {"image": x, "label": y}, shapes, shardings, loss_fn)


def stepper(compiled, prog: TrainProgram) -> Callable[[], None]:
    """call() running one compiled step, blocked on; the step donates its input state, so
    each call feeds the next."""
    box = [prog.state]

    def call():
        box[0], metrics = compiled(box[0], prog.batches)
        jax.block_until_ready((box[0], metrics))

    return call


def sampler_program(config, model, num: int, sampler: str, steps: int, mesh, shard: bool, params):
    """api.make_generator's sampler with params, drawing num class-conditional images (labels
    cycle through the classes, guidance 1). With shard the images are split over the mesh's
    devices (conditions in, images out); without, one program on the default device.

    -> (jitted fn, args(key) -> its arguments).
    """
    if not shard:  # one device: the params must not stay replicated over the mesh
        params = jax.device_put(params, jax.devices()[0])
    run = api.Loaded(config, model, params, build_schedule(config), 0)
    labels = np.arange(num) % config.data.num_classes
    go = api.make_generator(run, labels, sampler=sampler, steps=steps, guidance=1.0)
    if not shard:
        return go.fn, go.args
    rep, split = replicated(mesh), batch_sharding(mesh)
    fn = jax.jit(go.fn.__wrapped__, in_shardings=(rep, split, rep, rep), out_shardings=split)
    return fn, go.args
