"""UNet and attention: SD-compatible parameter paths, attention against numpy, conditioning."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.nn.layers import Attention, SpatialTransformer
from jldm.nn.unet import UNet

TINY = dict(
    channels=8,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attention_levels=(0, 1),
    num_heads=2,
    norm_groups=4,
)


def _init(model, *args):
    return jax.jit(model.init)(jax.random.PRNGKey(0), *args)["params"]


def _randomized(params, key):
    """Every param N(0, 0.3^2): zero-initialised output layers would hide the attention."""
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [0.3 * jax.random.normal(k, a.shape) for k, a in zip(keys, leaves, strict=True)]
    )


def _paths(params) -> set[str]:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {"/".join(k.key for k in path) for path, _ in flat}


def test_parameter_paths_follow_the_stable_diffusion_layout():
    x, t, ctx = jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,)), jnp.zeros((1, 3, 16))
    shapes = jax.eval_shape(UNet(out_channels=3, **TINY).init, jax.random.PRNGKey(0), x, t, ctx)
    paths = _paths(shapes["params"])
    expected = {
        "conv_in/kernel",
        "time_embedding/linear_1/kernel",
        "time_embedding/linear_2/bias",
        "down_blocks_0/resnets_0/norm1/scale",
        "down_blocks_0/resnets_0/time_emb_proj/kernel",
        "down_blocks_0/attentions_0/proj_in/kernel",
        "down_blocks_0/attentions_0/transformer_blocks_0/attn1/to_q/kernel",
        "down_blocks_0/attentions_0/transformer_blocks_0/attn2/to_k/kernel",
        "down_blocks_0/attentions_0/transformer_blocks_0/ff/proj/kernel",
        "down_blocks_0/downsamplers_0/conv/kernel",
        "down_blocks_1/resnets_0/conv_shortcut/kernel",
        "mid_block/resnets_1/conv2/kernel",
        "mid_block/attentions_0/transformer_blocks_0/attn2/to_out_0/bias",
        "up_blocks_0/resnets_1/conv_shortcut/kernel",
        "up_blocks_0/upsamplers_0/conv/kernel",
        "up_blocks_1/attentions_1/proj_out/kernel",
        "conv_norm_out/scale",
        "conv_out/kernel",
    }
    assert expected <= paths, sorted(expected - paths)
    assert not any(p.startswith("down_blocks_1/downsamplers") for p in paths)
    assert not any(p.startswith("up_blocks_1/upsamplers") for p in paths)
    # Up blocks have num_res_blocks + 1 ResBlocks, one per skip connection.
    assert not any(p.startswith("up_blocks_0/resnets_2") for p in paths)


def _np_attention(x, ctx, p, heads, mask=None):
    """Multi-head attention in float64 numpy, written from the formula."""
    q, k, v = (
        np.einsum("btd,de->bte", a, np.asarray(p[n]["kernel"], np.float64))
        for a, n in ((x, "to_q"), (ctx, "to_k"), (ctx, "to_v"))
    )
    b, tq, inner = q.shape
    hd = inner // heads
    q, k, v = (a.reshape(b, a.shape[1], heads, hd).transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
    if mask is not None:
        logits = np.where(mask[:, None, None, :], logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = (w @ v).transpose(0, 2, 1, 3).reshape(b, tq, inner)
    return out @ np.asarray(p["to_out_0"]["kernel"], np.float64) + np.asarray(
        p["to_out_0"]["bias"], np.float64
    )


def test_attention_matches_float64_reference_with_and_without_mask():
    rng = np.random.default_rng(0)
    x, ctx = rng.normal(size=(2, 5, 12)), rng.normal(size=(2, 7, 6))
    mask = np.array([[1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1]], bool)
    attn = Attention(heads=3, head_dim=4)
    p = _init(attn, jnp.asarray(x, jnp.float32), jnp.asarray(ctx, jnp.float32))
    for m in (None, mask):
        got = attn.apply(
            {"params": p},
            jnp.asarray(x, jnp.float32),
            jnp.asarray(ctx, jnp.float32),
            None if m is None else jnp.asarray(m),
        )
        np.testing.assert_allclose(got, _np_attention(x, ctx, p, 3, m), rtol=1e-4, atol=1e-5)


def test_cross_attention_sees_the_context_but_not_masked_padding():
    st = SpatialTransformer(heads=2, groups=4)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    x = jax.random.normal(k1, (2, 4, 4, 8))
    ctx = jax.random.normal(k2, (2, 5, 16))
    mask = jnp.array([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], bool)
    p = _randomized(_init(st, x, ctx, mask), k3)
    run = jax.jit(lambda c: st.apply({"params": p}, x, c, mask))
    base = run(ctx)
    padded = ctx.at[:, 3:].set(jax.random.normal(k3, (2, 2, 16)) * 10)
    np.testing.assert_allclose(run(padded), base, rtol=1e-5, atol=1e-5)
    changed = ctx.at[:, 0].add(1.0)
    assert float(jnp.abs(run(changed) - base).max()) > 1e-2


def test_unet_output_depends_on_time_and_context_and_bf16_stays_close():
    model = UNet(out_channels=1, **TINY)
    k1, k2 = jax.random.split(jax.random.PRNGKey(2))
    x, ctx = jax.random.normal(k1, (2, 8, 8, 1)), jax.random.normal(k2, (2, 3, 16))
    t = jnp.array([10, 500])
    p = _init(model, x, t, ctx)
    f = jax.jit(lambda t, c: model.apply({"params": p}, x, t, c))
    out = f(t, ctx)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert float(jnp.abs(f(t + 100, ctx) - out).max()) > 1e-4
    assert float(jnp.abs(f(t, ctx + 1.0) - out).max()) > 1e-4
    bf16 = jax.jit(UNet(out_channels=1, dtype=jnp.bfloat16, **TINY).apply)({"params": p}, x, t, ctx)
    scale = float(jnp.abs(out).max())
    assert float(jnp.abs(bf16 - out).max()) < 0.05 * scale


def test_dropout_only_in_training():
    model = UNet(out_channels=1, dropout=0.5, **TINY)
    x, t, ctx = jnp.ones((1, 8, 8, 1)), jnp.ones((1,)), jnp.ones((1, 2, 16))
    p = _init(model, x, t, ctx)
    ev = jax.jit(lambda: model.apply({"params": p}, x, t, ctx))
    np.testing.assert_array_equal(ev(), ev())
    tr = jax.jit(lambda k: model.apply({"params": p}, x, t, ctx, None, True, rngs={"dropout": k}))
    assert float(jnp.abs(tr(jax.random.PRNGKey(0)) - tr(jax.random.PRNGKey(1))).max()) > 1e-6
    np.testing.assert_array_equal(tr(jax.random.PRNGKey(0)), tr(jax.random.PRNGKey(0)))


def test_per_level_head_counts_match_one_head_width():
    # channels 8, 16: head width 4 means 2 heads at level 0 and 4 at level 1 and the mid block.
    per_level = UNet(out_channels=1, **dict(TINY, num_heads=(2, 4)))
    by_width = UNet(out_channels=1, **dict(TINY, head_dim=4))
    one_count = UNet(out_channels=1, **TINY)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    x, ctx, t = jax.random.normal(k1, (2, 8, 8, 1)), jax.random.normal(k2, (2, 3, 16)), jnp.ones(2)
    p = _init(per_level, x, t, ctx)
    shapes = jax.eval_shape(one_count.init, jax.random.PRNGKey(0), x, t, ctx)["params"]
    assert _paths(p) == _paths(shapes)
    p = _randomized(p, k3)
    apply = lambda model: jax.jit(model.apply)({"params": p}, x, t, ctx)
    out = apply(per_level)
    np.testing.assert_allclose(out, apply(by_width), rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(apply(one_count) - out).max()) > 1e-3
    with pytest.raises(ValueError, match="one count per level"):
        UNet(out_channels=1, **dict(TINY, num_heads=(2, 4, 4))).init(k1, x, t, ctx)


# --- The speed-minded layers (jldm.nn.functional) against their textbook forms ---------------


def _reference_group_norm(x, scale, bias, groups, eps):
    """GroupNorm from its definition (Wu & He 2018): normalise each (sample, group)."""
    g = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    axes = tuple(range(1, g.ndim - 2)) + (g.ndim - 1,)
    mean, var = g.mean(axes, keepdims=True), g.var(axes, keepdims=True)
    return ((g - mean) / jnp.sqrt(var + eps)).reshape(x.shape) * scale + bias


def test_group_norm_matches_float64_and_flax_with_gradients():
    from jldm.nn.functional import group_norm
    from jldm.nn.layers import GroupNorm

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 5, 6, 12)) * 2.0 + 1.5  # an offset mean, as after a residual add
    scale, bias = rng.normal(size=12) + 1.0, rng.normal(size=12)
    w = rng.normal(size=x.shape)
    with jax.enable_x64(True):  # the reference and its autodiff gradient in float64
        f64 = [jnp.asarray(v, jnp.float64) for v in (x, scale, bias)]
        want_y = np.asarray(_reference_group_norm(*f64, 4, 1e-5))
        loss64 = lambda *a: jnp.sum(jnp.tanh(_reference_group_norm(*a, 4, 1e-5)) * w)
        want = [np.asarray(g) for g in jax.grad(loss64, argnums=(0, 1, 2))(*f64)]
        tangents = [jnp.asarray(rng.normal(size=np.shape(v))) for v in f64]
        ref_gn = lambda *a: _reference_group_norm(*a, 4, 1e-5)
        want_jvp = np.asarray(jax.jvp(ref_gn, f64, tangents)[1])
    f32 = [jnp.asarray(v, jnp.float32) for v in (x, scale, bias)]
    got = jax.jit(lambda *a: group_norm(*a, 4, 1e-5))(*f32)
    np.testing.assert_allclose(got, want_y, atol=2e-5)
    # The hand-written derivative in forward mode, and transposed (reverse mode).
    t32 = [jnp.asarray(t, jnp.float32) for t in tangents]
    got_jvp = jax.jit(lambda a, t: jax.jvp(lambda *p: group_norm(*p, 4, 1e-5), a, t)[1])(f32, t32)
    np.testing.assert_allclose(got_jvp, want_jvp, rtol=1e-4, atol=1e-4 * np.abs(want_jvp).max())
    loss = lambda *a: jnp.sum(jnp.tanh(group_norm(*a, 4, 1e-5)) * jnp.asarray(w, jnp.float32))
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*f32)
    for g, ref in zip(grads, want, strict=True):
        np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())

    # The module: nn.GroupNorm's parameters and outputs, in float32 and bfloat16.
    xs = f32[0]
    p = {"params": {"scale": f32[1], "bias": f32[2]}}
    for dtype, tol in ((jnp.float32, 2e-5), (jnp.bfloat16, 0.2)):
        ours, flax_gn = GroupNorm(4, dtype=dtype), nn.GroupNorm(4, epsilon=1e-5, dtype=dtype)
        assert jax.tree_util.tree_structure(
            ours.init(jax.random.PRNGKey(0), xs)
        ) == jax.tree_util.tree_structure(flax_gn.init(jax.random.PRNGKey(0), xs))
        out = ours.apply(p, xs.astype(dtype))
        assert out.dtype == dtype
        ref = flax_gn.apply(p, xs.astype(dtype)).astype(jnp.float32)
        np.testing.assert_allclose(out.astype(jnp.float32), ref, atol=tol)
    with pytest.raises(ValueError, match="groups do not divide"):
        GroupNorm(5).init(jax.random.PRNGKey(0), xs)


def test_silu_and_its_derivative_match_the_logistic_form():
    from jldm.nn.functional import silu

    x = jnp.linspace(-30.0, 30.0, 2001)
    xs = np.asarray(x, np.float64)
    sig = 1.0 / (1.0 + np.exp(-xs))
    # (1 + tanh(x/2)) / 2 is exact to float32 rounding of 1 (6e-8) where the logistic is tiny.
    np.testing.assert_allclose(silu(x), xs * sig, rtol=1e-6, atol=1e-7 * 30)
    deriv = jax.vmap(jax.grad(silu))(x)
    np.testing.assert_allclose(deriv, sig * (1.0 + xs * (1.0 - sig)), rtol=1e-5, atol=1e-7 * 30)
    assert silu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


class _ReferenceUpsample(nn.Module):
    """Upsample by its definition: nearest x2, then a 3x3 "same" nn.Conv."""

    channels: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return nn.Conv(self.channels, (3, 3), dtype=self.dtype, name="conv")(x)


class _ReferenceDownsample(nn.Module):
    """Downsample by its definition: symmetric zero padding, then a stride-2 VALID nn.Conv."""

    channels: int
    dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        return nn.Conv(
            self.channels, (3, 3), strides=2, padding="VALID", dtype=self.dtype, name="conv"
        )(x)


def _grads(module, params, x, g):
    """Gradients of sum(module(x) * g) with respect to the params and x."""
    return jax.grad(lambda p, x: jnp.sum(module.apply(p, x) * g), argnums=(0, 1))(params, x)


def _reference_conv1x1(features, dtype=jnp.float32, name=None):
    return nn.Conv(features, (1, 1), dtype=dtype, name=name)


@pytest.mark.parametrize("shape", [(2, 4, 4, 6), (1, 5, 3, 4)])
def test_resampling_and_1x1_layers_equal_their_nn_conv_definitions(shape):
    from jldm.nn.layers import Conv1x1, Downsample, Upsample

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    pairs = (
        (Upsample(5), _ReferenceUpsample(5)),
        (Downsample(5), _ReferenceDownsample(5)),
        (Conv1x1(5), _reference_conv1x1(5)),
    )
    for ours, ref in pairs:
        p = ours.init(jax.random.PRNGKey(1), x)
        # Same names, shapes and initial values as the nn.Conv they replace.
        jax.tree_util.tree_map(np.testing.assert_array_equal, p, ref.init(jax.random.PRNGKey(1), x))
        p = _randomized(p, jax.random.PRNGKey(2))
        out, want = ours.apply(p, x), ref.apply(p, x)
        assert out.shape == want.shape
        np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
        g = jax.random.normal(jax.random.PRNGKey(3), out.shape)
        jax.tree_util.tree_map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
            _grads(ours, p, x, g),
            _grads(ref, p, x, g),
        )


def test_unet_equals_its_flax_layer_formulation(monkeypatch):
    """The whole UNet against the same network written with flax's GroupNorm, jax.nn.silu and
    plain convolutions: the same parameter tree and initial values, the same outputs (the
    layers' gradients are checked one by one above)."""
    from jldm.nn import layers, unet

    model = UNet(out_channels=1, **TINY)
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(4), 3)
    x, ctx, t = jax.random.normal(k1, (2, 8, 8, 1)), jax.random.normal(k2, (2, 3, 16)), jnp.ones(2)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, ctx)
    params = _randomized(shapes, k3)
    ours = jax.jit(model.apply)(params, x, t, ctx)
    init_paths = _paths(shapes["params"])
    dx = jax.random.normal(jax.random.PRNGKey(5), x.shape)
    # forward mode (exact-trace likelihoods, sliced score matching) through every layer
    jvp = lambda x, dx: jax.jvp(lambda z: model.apply(params, z, t, ctx), (x,), (dx,))[1]
    ours_jvp = jax.jit(jvp)(x, dx)

    flax_gn = lambda groups, epsilon, dtype, name: nn.GroupNorm(
        groups, epsilon=epsilon, dtype=dtype, name=name
    )
    for module, name, value in (
        (layers, "GroupNorm", flax_gn),
        (unet, "GroupNorm", flax_gn),
        (layers, "silu", jax.nn.silu),
        (unet, "silu", jax.nn.silu),
        (layers, "Conv1x1", _reference_conv1x1),
        (unet, "Upsample", _ReferenceUpsample),
        (unet, "Downsample", _ReferenceDownsample),
    ):
        monkeypatch.setattr(module, name, value)
    ref_shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, t, ctx)
    assert jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), ref_shapes) == (
        jax.tree_util.tree_map(lambda s: (s.shape, s.dtype), shapes)
    )
    assert _paths(ref_shapes["params"]) == init_paths
    ref = jax.jit(model.apply)(params, x, t, ctx)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * float(jnp.abs(ref).max()))
    ref_jvp = jax.jit(jvp)(x, dx)
    np.testing.assert_allclose(ours_jvp, ref_jvp, atol=1e-4 * float(jnp.abs(ref_jvp).max()))
    assert float(jnp.abs(ref).max()) > 1e-2  # randomized params: a real signal compared
