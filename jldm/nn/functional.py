"""Array functions behind the UNet's layers (no modules), each in two forms chosen per backend.

On XLA:CPU, forms tuned for it: SiLU with the logistic written through tanh, GroupNorm from
per-channel sums and a block-diagonal matmul with a hand-written derivative (forward mode;
reverse mode is its transpose), and the 3x3 conv of a nearest-upsampled image computed by
phases on the low resolution. On every other backend (GPU, TPU), the textbook forms, which XLA
fuses natively: `jax.nn.silu`, GroupNorm as `flax.linen.GroupNorm` computes it, and nearest
upsampling followed by the conv.

`silu`, `group_norm` and `upsample_conv` pick one with `jax.lax.platform_dependent`, so the
choice is made when a program is lowered for a backend and the compiler sees only that form
(an export for several platforms carries both, resolved when it is compiled). Tracing still
stages both forms, and differentiates both under jax.grad or jax.jvp; the one not chosen never
reaches the compiler. Both forms are module functions (`*_cpu`, `*_textbook`);
tests/test_platform_forms.py checks that they agree within rounding in values, gradients and
forward mode, and which form each lowering holds.
"""

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

# --- SiLU ----------------------------------------------------------------------------------


def silu(x: jax.Array) -> jax.Array:
    """x * sigmoid(x) (Hendrycks & Gimpel 2016; Elfwing et al. 2018), any shape and dtype:
    silu_cpu on XLA:CPU, silu_textbook elsewhere."""
    return jax.lax.platform_dependent(x, cpu=silu_cpu, default=silu_textbook)


def silu_textbook(x: jax.Array) -> jax.Array:
    """x * logistic(x), any shape (jax.nn.silu)."""
    return jax.nn.silu(x)


@jax.custom_jvp
def silu_cpu(x: jax.Array) -> jax.Array:
    """x * sigmoid(x), any shape, with sigmoid(x) = (1 + tanh(x / 2)) / 2.

    XLA:CPU's tanh is a vectorised rational function, where 1 / (1 + exp(-x)) costs an exp
    and a division per element.
    """
    return x * _sigmoid(x)


def _sigmoid(x: jax.Array) -> jax.Array:
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


@silu_cpu.defjvp
def _silu_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    s = _sigmoid(x)
    return x * s, dx * (s * (1.0 + x * (1.0 - s)))


# --- GroupNorm -----------------------------------------------------------------------------


def group_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float
) -> jax.Array:
    """GroupNorm (Wu & He 2018) of x: [B, ..., C]; scale, bias: [C] -> float32 [B, ..., C]:
    group_norm_cpu on XLA:CPU, group_norm_textbook elsewhere."""
    cpu, textbook = _group_norm_forms(groups, eps)
    return jax.lax.platform_dependent(x, scale, bias, cpu=cpu, default=textbook)


@functools.cache
def _group_norm_forms(groups: int, eps: float) -> tuple[Callable, Callable]:
    """The two forms as functions of (x, scale, bias), one pair per (groups, eps): the same
    callables on every call let jax reuse the branches it traced for equal shapes."""
    return (
        functools.partial(group_norm_cpu, groups=groups, eps=eps),
        functools.partial(group_norm_textbook, groups=groups, eps=eps),
    )


def group_norm_textbook(
    x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float
) -> jax.Array:
    """GroupNorm as flax.linen.GroupNorm computes it. x: [B, ..., C] -> float32 [B, ..., C].

    Float32 statistics of each (sample, group) over the spatial axes and the group's channels,
    Var = E[x^2] - E[x]^2 clipped at 0; derivatives by autodiff.
    """
    b, c = x.shape[0], x.shape[-1]
    g = x.astype(jnp.float32).reshape(b, -1, groups, c // groups)  # [B, N, G, C/G]
    mean = jnp.mean(g, axis=(1, 3), keepdims=True)
    var = jnp.maximum(jnp.mean(g * g, axis=(1, 3), keepdims=True) - mean * mean, 0.0)
    xhat = ((g - mean) * jax.lax.rsqrt(var + eps)).reshape(x.shape)
    return xhat * scale + bias


def _per_sample(v: jax.Array, ndim: int) -> jax.Array:
    """[B, C] -> [B, 1, ..., 1, C]: broadcastable against an activation of rank ndim."""
    return v.reshape(v.shape[:1] + (1,) * (ndim - 2) + v.shape[1:])


def _group_totals(v: jax.Array, groups: int) -> jax.Array:
    """Each channel's group total, for several [B, C] vectors side by side. v: [B, K*C]
    (K vectors of C channels) -> [B, K*C].

    A small matmul with a block-diagonal 0/1 matrix rather than reshapes and repeats: XLA
    then hands the big elementwise pass over the activation finished [B, C] vectors instead
    of fusing in a gather of the group values by channel // (C / G) for each of its elements.
    """
    # Built from iotas in the program, not a numpy table: inside a loop jax would hoist a table
    # out of platform_dependent's CPU branch, and every other platform's program would carry it.
    group = jax.lax.iota(jnp.int32, v.shape[-1]) // (v.shape[-1] // groups)  # K*C in K*G groups
    m = (group[:, None] == group[None, :]).astype(v.dtype)
    return jnp.dot(v, m, precision=jax.lax.Precision.HIGHEST)


def _group_stats(x: jax.Array, groups: int, eps: float) -> tuple[jax.Array, jax.Array]:
    """Mean and 1/sqrt(var + eps) of each (sample, group), spread to channels: [B, C] each.

    x: [B, ..., C] float32. Per-channel sums over the spatial axes come first: reductions that
    keep the channels contiguous, where reducing [B, H, W, G, C/G] over (H, W, C/G) at once
    strides over a short minor axis. Var = E[x^2] - E[x]^2 clipped at 0, as flax computes it.
    """
    c = x.shape[-1]
    axes = tuple(range(1, x.ndim - 1))
    n = math.prod(x.shape[1:-1]) * (c // groups)
    sums = jnp.concatenate([jnp.sum(x, axes), jnp.sum(x * x, axes)], axis=-1)
    moments = _group_totals(sums, 2 * groups) / n
    mean, mean_sq = moments[:, :c], moments[:, c:]
    return mean, jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + eps)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def group_norm_cpu(
    x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float
) -> jax.Array:
    """group_norm_textbook from per-channel sums, with a hand-written derivative.
    x: [B, ..., C]; scale, bias: [C] -> float32 [B, ..., C]."""
    xf = x.astype(jnp.float32)
    mean, inv = _group_stats(xf, groups, eps)
    return (xf - _per_sample(mean, x.ndim)) * _per_sample(inv * scale, x.ndim) + bias


@group_norm_cpu.defjvp
def _group_norm_jvp(groups, eps, primals, tangents):
    """The derivative from two per-channel sums and one elementwise pass over the activation,
    linear in the tangents, so reverse mode is its transpose (and forward mode works too).

    With xhat = (x - mean) * inv, per group
    d xhat = inv * (dx - mean(dx) - xhat * mean(xhat * dx)), and
    dy = scale * d xhat + xhat * dscale + dbias; both group means come from the per-channel
    sums of dx and x * dx over the spatial axes (mean and inv are constant over a group).
    """
    (x, scale, bias), (dx, dscale, dbias) = primals, tangents
    xf, dxf = x.astype(jnp.float32), dx.astype(jnp.float32)
    c, nd = x.shape[-1], x.ndim
    axes = tuple(range(1, nd - 1))
    n = math.prod(x.shape[1:-1]) * (c // groups)
    mean, inv = _group_stats(xf, groups, eps)
    y = (xf - _per_sample(mean, nd)) * _per_sample(inv * scale, nd) + bias
    s1 = jnp.sum(dxf, axis=axes)  # [B, C]
    s2 = inv * (jnp.sum(xf * dxf, axis=axes) - mean * s1)  # sum of xhat * dx
    m = _group_totals(jnp.concatenate([s1, s2], axis=-1), 2 * groups) / n
    m1, m2 = m[:, :c], m[:, c:]
    # dy = dx * a + x * b + offset, each coefficient [B, C]
    a = inv * scale
    b = inv * (dscale - inv * scale * m2)
    offset = inv * (scale * (inv * mean * m2 - m1) - mean * dscale) + dbias
    dy = dxf * _per_sample(a, nd) + xf * _per_sample(b, nd) + _per_sample(offset, nd)
    return y, dy


# --- The 3x3 conv of a nearest-upsampled image -----------------------------------------------

_NHWC = ("NHWC", "HWIO", "NHWC")


def upsample_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 "same" conv of x upsampled x2, nearest. x: [B,H,W,C], kernel [3,3,C,O] -> [B,2H,2W,O]:
    upsample_conv_cpu on XLA:CPU, upsample_conv_textbook elsewhere."""
    return jax.lax.platform_dependent(
        x, kernel, cpu=upsample_conv_cpu, default=upsample_conv_textbook
    )


def upsample_conv_textbook(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Nearest x2 upsampling, then a 3x3 "same" conv. x: [B,H,W,C], kernel [3,3,C,O] ->
    [B,2H,2W,O]."""
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    pad = ((1, 1), (1, 1))
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), pad, dimension_numbers=_NHWC)


def _phase_taps(k: jax.Array, axis: int) -> tuple[jax.Array, jax.Array]:
    """A 3-tap kernel axis seen from the low resolution: output phase 0 reads rows (i-1, i)
    with taps (k0, k1 + k2), phase 1 reads rows (i, i+1) with taps (k0 + k1, k2)."""
    k0, k1, k2 = (jnp.take(k, i, axis=axis) for i in range(3))
    return jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)


@jax.custom_jvp
def upsample_conv_cpu(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """upsample_conv_textbook without building the upsampled image. x: [B,H,W,C], kernel
    [3,3,C,O] -> [B,2H,2W,O].

    Each of the four output phases (row, column parity) is a 2x2 conv of x, so one 2x2 conv
    with 4*O outputs over x padded by 1 gives them all: (H+1)(W+1)*16 multiply-adds per
    C*O instead of 2H*2W*9. Its derivative is the textbook form's (linear in each argument),
    so reverse mode runs that form's transposed convolutions, which XLA:CPU handles well.
    """
    b, h, w, _ = x.shape
    out = kernel.shape[-1]
    phases = [c for r in _phase_taps(kernel, 0) for c in _phase_taps(r, 1)]  # (0,0) (0,1) ...
    y = jax.lax.conv_general_dilated(
        x, jnp.concatenate(phases, -1), (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC
    ).reshape(b, h + 1, w + 1, 2, 2, out)
    rows = [
        jnp.stack([y[:, i : i + h, j : j + w, i, j] for j in range(2)], axis=3) for i in range(2)
    ]
    return jnp.stack(rows, axis=2).reshape(b, 2 * h, 2 * w, out)


@upsample_conv_cpu.defjvp
def _upsample_conv_jvp(primals, tangents):
    (x, kernel), (dx, dkernel) = primals, tangents
    dy = upsample_conv_textbook(dx, kernel) + upsample_conv_textbook(x, dkernel)
    return upsample_conv_cpu(x, kernel), dy
