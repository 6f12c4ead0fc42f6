"""The two forms of each jldm.nn.functional layer: the XLA:CPU form against the textbook form
and a float64 reference (values, gradients, forward mode; float32 and bfloat16 inputs), and
which form a lowering for each backend holds under jit, grad, jvp, vmap and remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.nn import functional as F

EPS = 1e-5


def _close(got, want, scale_tol, err_msg=""):
    """|got - want| <= scale_tol * max|want| elementwise: errors on the array's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    tol = scale_tol * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol, err_msg=err_msg)


# --- float64 references, written apart from both forms ----------------------------------------


def _gn64(x, scale, bias, groups):
    """GroupNorm by its definition with a two-pass variance (jnp.var), for float64 inputs."""
    g = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
    mean, var = g.mean((1, 3), keepdims=True), g.var((1, 3), keepdims=True)
    return ((g - mean) / jnp.sqrt(var + EPS)).reshape(x.shape) * scale + bias


def _upconv64(x, kernel):
    """Nearest x2 upsampling then a zero-padded 3x3 conv, as a sum of nine shifted matmuls."""
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    h, w = up.shape[1:3]
    pad = jnp.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(
        jnp.einsum("bhwc,co->bhwo", pad[:, i : i + h, j : j + w], kernel[i, j])
        for i in range(3)
        for j in range(3)
    )


def _figures(loss, fn, n):
    """(args, tangents) -> fn's value, the gradient of loss(fn(*args)) for every argument and
    fn's jvp, as one jitted program."""

    def figures(args, tangents):
        grads = jax.grad(lambda *a: loss(fn(*a)), argnums=tuple(range(n)))(*args)
        return fn(*args), grads, jax.jvp(fn, args, tangents)[1]

    return jax.jit(figures)


def _reference(loss, fn, args, tangents):
    """_figures in float64."""
    with jax.enable_x64(True):
        a64 = tuple(jnp.asarray(a, jnp.float64) for a in args)
        t64 = tuple(jnp.asarray(t, jnp.float64) for t in tangents)
        return jax.tree_util.tree_map(np.asarray, _figures(loss, fn, len(args))(a64, t64))


def _check_forms(forms, ref_fn, args, tangents, loss, close):
    """Every form against the float64 reference, and the CPU form against the textbook form:
    values, the gradient of loss(fn(*args)) for every argument, and the jvp."""
    want = _reference(loss, ref_fn, args, tangents)
    args, tangents = tuple(args), tuple(tangents)
    got = {name: _figures(loss, fn, len(args))(args, tangents) for name, fn in forms.items()}
    pairs = [(f"{n} vs float64", got[n], want) for n in got]
    pairs.append(("cpu vs textbook", got["cpu"], got["textbook"]))
    for what, (y, grads, jvp), (want_y, want_grads, want_jvp) in pairs:
        close(y, want_y, f"{what}: values")
        for i, (g, w) in enumerate(zip(grads, want_grads, strict=True)):
            close(g, w, f"{what}: gradient {i}")
        close(jvp, want_jvp, f"{what}: jvp")


def _silu_forms():
    return {"cpu": F.silu_cpu, "textbook": F.silu_textbook, "dispatched": F.silu}


def _gn_forms(groups):
    return {
        "cpu": lambda *a: F.group_norm_cpu(*a, groups, EPS),
        "textbook": lambda *a: F.group_norm_textbook(*a, groups, EPS),
        "dispatched": lambda *a: F.group_norm(*a, groups, EPS),
    }


def _up_forms():
    return {
        "cpu": F.upsample_conv_cpu,
        "textbook": F.upsample_conv_textbook,
        "dispatched": F.upsample_conv,
    }


# --- float32: values, gradients and jvp against float64 -------------------------------------


def test_silu_forms_agree_with_float64():
    rng = np.random.default_rng(0)
    x = np.concatenate([np.linspace(-30.0, 30.0, 601), rng.normal(size=200) * 3]).astype(np.float32)
    w, t = rng.normal(size=x.shape), rng.normal(size=x.shape)
    loss = lambda y: jnp.sum(jnp.sin(y) * w.astype(y.dtype))
    ref = lambda x: x / (1.0 + jnp.exp(-x))
    # (1 + tanh(x/2)) / 2 is exact to float32 rounding of 1 (6e-8), so near x = -17 the CPU
    # form is off by 17 * 6e-8 absolute where the true value is of that size.
    close = lambda got, want, msg: np.testing.assert_allclose(
        got, want, rtol=2e-6, atol=2e-5, err_msg=msg
    )
    _check_forms(_silu_forms(), ref, [jnp.asarray(x)], [jnp.asarray(t, jnp.float32)], loss, close)


@pytest.mark.parametrize("shape, groups", [((3, 5, 6, 12), 4), ((2, 7, 8), 2)])
def test_group_norm_forms_agree_with_float64(shape, groups):
    rng = np.random.default_rng(1)
    c = shape[-1]
    # an offset mean, as after a residual add, where E[x^2] - E[x]^2 loses digits
    args = [rng.normal(size=shape) * 2.0 + 1.5, rng.normal(size=c) + 1.0, rng.normal(size=c)]
    tangents = [rng.normal(size=np.shape(a)) for a in args]
    w = rng.normal(size=shape)
    loss = lambda y: jnp.sum(jnp.tanh(y) * w.astype(y.dtype))
    f32 = lambda vs: [jnp.asarray(v, jnp.float32) for v in vs]
    ref = lambda *a: _gn64(*a, groups)
    close = lambda got, want, msg: _close(got, want, 5e-6, msg)
    _check_forms(_gn_forms(groups), ref, f32(args), f32(tangents), loss, close)


def test_upsample_conv_forms_agree_with_float64():
    rng = np.random.default_rng(2)
    args = [rng.normal(size=(2, 4, 5, 3)), rng.normal(size=(3, 3, 3, 5)) / 3]
    tangents = [rng.normal(size=a.shape) for a in args]
    w = rng.normal(size=(2, 8, 10, 5))
    loss = lambda y: jnp.sum(jnp.sin(y) * w.astype(y.dtype))
    f32 = lambda vs: [jnp.asarray(v, jnp.float32) for v in vs]
    close = lambda got, want, msg: _close(got, want, 2e-6, msg)
    _check_forms(_up_forms(), _upconv64, f32(args), f32(tangents), loss, close)


def test_group_norm_textbook_is_flax_group_norm():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 4, 4, 8)) * 3 - 1, jnp.float32)
    scale = jnp.asarray(rng.normal(size=8) + 1, jnp.float32)
    bias = jnp.asarray(rng.normal(size=8), jnp.float32)
    flax_gn = nn.GroupNorm(num_groups=2, epsilon=EPS)
    p = {"params": {"scale": scale, "bias": bias}}
    for xi in (x, x.astype(jnp.bfloat16)):  # flax's statistics are float32 either way
        want = jax.jit(flax_gn.apply)(p, xi)
        got = jax.jit(F.group_norm_textbook, static_argnums=(3, 4))(xi, scale, bias, 2, EPS)
        assert got.dtype == want.dtype == jnp.float32
        _close(got, want, 1e-6)


# --- bfloat16 inputs: both forms keep the dtypes and agree within bfloat16 rounding ---------


def test_bfloat16_inputs_give_the_same_dtypes_and_values_in_both_forms():
    rng = np.random.default_rng(4)
    bf = lambda *s: jnp.asarray(rng.normal(size=s), jnp.bfloat16)
    x, k = bf(2, 4, 4, 8), bf(3, 3, 8, 6)
    scale, bias = jnp.asarray(rng.normal(size=8) + 1, jnp.float32), jnp.zeros(8)
    cases = [  # (forms, args, output dtype): GroupNorm's statistics and output are float32
        (_silu_forms(), (4 * x,), jnp.bfloat16),
        (_gn_forms(4), (x, scale, bias), jnp.float32),
        (_up_forms(), (x, k), jnp.bfloat16),
    ]
    for forms, args, dtype in cases:
        w = jnp.asarray(rng.normal(size=jax.eval_shape(forms["cpu"], *args).shape), jnp.float32)
        # the float32 result of the same (bfloat16-rounded) inputs
        want = jax.jit(forms["textbook"])(*(a.astype(jnp.float32) for a in args))
        grads = {}
        for name, fn in forms.items():
            # a linear loss: its gradient does not depend on the rounding of the output
            def loss(x, *rest, fn=fn, w=w):
                y = fn(x, *rest)
                return jnp.sum(y.astype(jnp.float32) * w), y

            grads[name], out = jax.jit(jax.grad(loss, has_aux=True))(*args)
            assert out.dtype == dtype, name
            assert grads[name].dtype == jnp.bfloat16, name
            _close(out, want, 2e-2, name)
        for name in forms:
            _close(grads[name], grads["textbook"], 2e-2, name)


# --- which form each lowering holds, under each transformation --------------------------------

# A mark of each form in StableHLO: the CPU SiLU has tanh, the textbook one 1 / (1 + exp(-x));
# the CPU GroupNorm sums its groups by a matmul (the textbook one has no dot); the CPU upsample
# conv runs a 2x2 kernel with 4 * 5 outputs.
_X = jnp.ones((2, 4, 5, 8))
_CASES = {
    "silu": (F.silu, (_X,), "stablehlo.tanh", "stablehlo.exponential"),
    "group_norm": (
        lambda x, s, b: F.group_norm(x, s, b, 4, EPS),
        (_X, jnp.ones(8), jnp.zeros(8)),
        "stablehlo.dot_general",
        None,
    ),
    "upsample_conv": (F.upsample_conv, (_X, jnp.ones((3, 3, 8, 5))), "<2x2x8x20x", None),
}


def _sum_sin(f):
    return lambda *a: jnp.sum(jnp.sin(f(*a)))


_TRANSFORMS = {
    "plain": lambda f, n: f,
    "grad": lambda f, n: jax.grad(_sum_sin(f), argnums=tuple(range(n))),
    "jvp": lambda f, n: lambda *a: jax.jvp(f, a, a),
    "vmap": lambda f, n: jax.vmap(f, in_axes=(0,) + (None,) * (n - 1)),
    "remat_grad": lambda f, n: jax.grad(
        jax.checkpoint(_sum_sin(f), policy=jax.checkpoint_policies.nothing_saveable)
    ),
    "jvp_of_grad": lambda f, n: lambda *a: jax.jvp(jax.grad(_sum_sin(f)), a, a)[1],
}


def _lowered(fn, args, platforms):
    return jax.export.export(jax.jit(fn), platforms=platforms)(*args).mlir_module()


@pytest.mark.parametrize("transform", list(_TRANSFORMS))
def test_cpu_lowering_holds_the_cpu_form_and_cuda_tpu_the_textbook_form(transform):
    for name, (fn, args, cpu_mark, textbook_mark) in _CASES.items():
        if transform == "vmap":  # a leading axis over x only
            args = (jnp.stack([args[0], 2 * args[0]]), *args[1:])
        f = _TRANSFORMS[transform](fn, len(args))
        cpu = _lowered(f, args, ("cpu",))
        accelerators = _lowered(f, args, ("cuda", "tpu"))
        assert cpu_mark in cpu and cpu_mark not in accelerators, name
        if textbook_mark:
            assert textbook_mark in accelerators and textbook_mark not in cpu, name


def test_an_export_for_cpu_and_cuda_holds_both_forms_and_runs_the_cpu_one_here():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(2, 4, 5, 8)), jnp.float32)
    scale, bias, k = jnp.full(8, 1.5), jnp.full(8, 0.25), jnp.full((3, 3, 8, 5), 0.1)

    def f(x):
        return F.upsample_conv(F.silu(F.group_norm(x, scale, bias, 4, EPS)), k)

    exp = jax.export.export(jax.jit(f), platforms=("cpu", "cuda"))(x)
    text = exp.mlir_module()
    for mark in ("stablehlo.tanh", "stablehlo.exponential", "<2x2x8x20x"):
        assert mark in text, mark
    cpu_form = jax.jit(
        lambda x: F.upsample_conv_cpu(F.silu_cpu(F.group_norm_cpu(x, scale, bias, 4, EPS)), k)
    )(x)
    textbook = jax.jit(
        lambda x: F.upsample_conv_textbook(
            F.silu_textbook(F.group_norm_textbook(x, scale, bias, 4, EPS)), k
        )
    )(x)
    got = exp.call(x)
    _close(got, cpu_form, 1e-6)
    _close(got, textbook, 1e-5)
