"""TrainState and the optimizer: everything a checkpoint holds besides the data position."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax


@flax.struct.dataclass
class TrainState:
    """step: int32 []; params and ema_params: float32 pytrees; rng: uint32 [2] base key."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any
    rng: jax.Array


def learning_rate(train: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup to train.lr over train.warmup_steps, then constant."""
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, train.lr, max(train.warmup_steps, 1)),
            optax.constant_schedule(train.lr),
        ],
        [max(train.warmup_steps, 1)],
    )


def make_optimizer(train: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """AdamW at learning_rate(train); global-norm gradient clipping."""
    return optax.chain(
        optax.clip_by_global_norm(train.grad_clip),
        optax.adamw(learning_rate(train), b1=0.9, b2=0.99, weight_decay=train.weight_decay),
    )


def create_state(init_fn, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Fresh state: init_fn(key) -> params; EMA starts at the initial params."""
    k_init, rng = jax.random.split(jax.random.PRNGKey(seed))
    params = init_fn(k_init)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree_util.tree_map(jnp.copy, params),
        opt_state=tx.init(params),
        rng=rng,
    )


def abstract_state(init_fn, tx: optax.GradientTransformation, seed: int) -> TrainState:
    """Shapes and dtypes of create_state(init_fn, tx, seed), without allocating it."""
    return jax.eval_shape(lambda: create_state(init_fn, tx, seed))
