"""The jitted training step: k optimizer steps fused in one lax.scan, sharded over the mesh."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jldm.build.state import TrainState
from jldm.errors import UserError
from jldm.train.sharding import batch_sharding, replicated


def check_steps_per_call(section, prefix: str = "train") -> None:
    """steps_per_call >= 1 (default 1), and steps, checkpoint_every, log_every and sample_every
    multiples of it."""
    k = section.get("steps_per_call", 1)
    if not isinstance(k, int) or k < 1:
        raise UserError(f"{prefix}.steps_per_call={k} must be an integer >= 1")
    for name in ("steps", "checkpoint_every", "log_every", "sample_every"):
        if section.get(name, 0) % k:
            raise UserError(
                f"{prefix}.{name}={section[name]} is not a multiple of "
                f"{prefix}.steps_per_call={k}: make it one"
            )


def make_update(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    ema_decay: float,
    skip_nonfinite: bool = False,
    param_shardings=None,
):
    """One step: state, batch -> state, metrics. The step's key is fold_in(rng, step).

    metrics["nonfinite"] is 1 where the loss or gradients were NaN/Inf; with skip_nonfinite
    such a step leaves params, EMA and optimizer state as they were (the step still counts).
    param_shardings (FSDP): the params' NamedShardings; the step gathers the full params for
    the loss and scatters the gradients back to that split.
    """

    def update(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        params = state.params
        if param_shardings is not None:
            # Without these constraints XLA may split activations by features to match the
            # split weights; gathering weights keeps the forward and backward data parallel.
            full = jax.tree_util.tree_map(
                lambda s: NamedSharding(s.mesh, PartitionSpec()), param_shardings
            )
            params = jax.lax.with_sharding_constraint(params, full)
        (loss, metrics), grads = grad_fn(params, rng, batch)
        if param_shardings is not None:
            grads = jax.lax.with_sharding_constraint(grads, param_shardings)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree_util.tree_map(
            lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, state.ema_params, params
        )
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        if skip_nonfinite:
            params, ema = (
                keep_if_finite(finite, params, state.params),
                keep_if_finite(finite, ema, state.ema_params),
            )
            opt_state = keep_if_finite(finite, opt_state, state.opt_state)
        metrics = dict(metrics, grad_norm=grad_norm, nonfinite=1.0 - finite.astype(jnp.float32))
        new = state.replace(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new, metrics

    return update


def keep_if_finite(finite: jax.Array, new, old):
    """new where finite, else old (leaf by leaf): how a skipped step leaves its state."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, old)


def make_train_step(update: Callable, mesh: Mesh, state_shardings=None):
    """train_step(state, batches) -> (state, metrics); batches: {k: [k, B, ...]}, metrics: [k].

    update(state, batch) -> (state, metrics) is one step (see make_update). The state is
    donated and kept in state_shardings (a TrainState of NamedShardings, see
    sharding.state_sharding; None: replicated); the batch axis (axis 1) is split over devices.
    """

    def train_step(state, batches):
        if jax.tree_util.tree_leaves(batches)[0].shape[0] == 1:
            # A length-1 scan still lowers to a while loop, which XLA:CPU runs far slower.
            state, metrics = update(state, jax.tree_util.tree_map(lambda b: b[0], batches))
            return state, jax.tree_util.tree_map(lambda m: m[None], metrics)
        return jax.lax.scan(update, state, batches)

    rep = replicated(mesh)
    state_sh = rep if state_shardings is None else state_shardings
    return jax.jit(
        train_step,
        in_shardings=(state_sh, batch_sharding(mesh, batch_axis=1)),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
    )


def mean_metrics(metrics: dict) -> dict[str, float]:
    """Host floats: the mean of each [k] metric over the fused steps."""
    return {k: float(jnp.mean(v)) for k, v in jax.device_get(metrics).items()}
