"""UNet and attention: SD-compatible parameter paths, attention against numpy, conditioning."""

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
