"""Text conditioning: captions, the offline tokenizer, the CLIP-style encoder against a float64
numpy forward pass, masks, pooling, and cross-attention from the UNet's SpatialTransformer."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.data.captions import (
    CaptionTokenizer,
    all_captions,
    build_tokenizer,
    caption,
    num_templates,
    random_caption,
    random_captions,
)
from jldm.nn.layers import SpatialTransformer
from jldm.nn.text_encoder import CLIPTextEncoder, quick_gelu
from tests.host_init import host_params, paths

TINY = dict(
    vocab_size=40,
    hidden_size=16,
    intermediate_size=32,
    num_layers=2,
    num_heads=4,
    max_position_embeddings=12,
)


@pytest.fixture(scope="module")
def tokenizer() -> CaptionTokenizer:
    return build_tokenizer()


def _encoder(seed: int = 0, **kw):
    enc = CLIPTextEncoder(**{**TINY, **kw})
    ids = jnp.zeros((1, 8), jnp.int32)
    # Larger than fan-in scale so attention weights are far from uniform.
    return enc, host_params(enc, ids, seed=seed, scale=2.0)


def test_captions_are_deterministic_and_cover_both_datasets():
    assert caption("digits", 7, 0) == "a handwritten digit seven"
    assert caption("digits", 7, 1) == "a drawing of the number 7"
    assert caption("fashion_mnist", 9, 0) == "an ankle boot"
    assert caption("fashion_mnist", 0, 1) == "a photo of a t-shirt"
    assert caption("digits", 3, num_templates("digits")) == caption("digits", 3, 0)
    assert num_templates("digits") >= 4 and num_templates("fashion_mnist") >= 4
    drawn = random_captions("digits", [5] * 50, 0)
    assert drawn == random_captions("digits", [5] * 50, 0)
    assert len(set(drawn)) > 2 and all(c in all_captions(["digits"]) for c in drawn)
    assert all(("five" in c) or ("5" in c) for c in drawn)
    key = jax.random.PRNGKey(3)
    assert random_caption("fashion_mnist", 2, key) == random_caption("fashion_mnist", 2, key)
    with pytest.raises(ValueError, match="no captions"):
        caption("cifar10", 0, 0)


def test_tokenizer_round_trip_padding_and_save_load(tokenizer, tmp_path):
    prompts = [caption("digits", 7, 0), caption("fashion_mnist", 9, 1), "A Handwritten SEVEN"]
    ids, mask = tokenizer.encode(prompts, max_length=10)
    assert ids.shape == mask.shape == (3, 10) and ids.dtype == np.int32
    lengths = mask.sum(1)
    # <bos> + words + <eos>, then <pad> with mask 0.
    np.testing.assert_array_equal(lengths, [6, 8, 5])
    assert (ids[:, 0] == tokenizer.bos_id).all()
    assert (ids[np.arange(3), lengths - 1] == tokenizer.eos_id).all()
    assert (ids[mask == 0] == tokenizer.pad_id).all()
    assert tokenizer.decode(ids) == [prompts[0], prompts[1], "a handwritten seven"]
    # Every caption word is in the vocabulary: no <unk>.
    all_ids, all_mask = tokenizer.encode(all_captions(), max_length=12)
    unk = tokenizer.hf.unk_token_id
    assert not (all_ids[all_mask == 1] == unk).any()
    assert tokenizer.encode(["a purple digit"], 8)[0][0, 2] == unk
    # Punctuation is split off and comes back space-separated.
    assert tokenizer.decode(tokenizer.encode(["a t-shirt"], 8)[0]) == ["a t - shirt"]

    tokenizer.save(tmp_path / "tok")
    loaded = CaptionTokenizer.load(tmp_path / "tok")
    np.testing.assert_array_equal(loaded.encode(prompts, 10)[0], ids)
    assert loaded.vocab_size == tokenizer.vocab_size
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        CaptionTokenizer.load(tmp_path / "missing")


def test_truncation_warns_with_the_lengths_and_keeps_eos(tokenizer):
    long = "a drawing of the number seven " * 3  # 18 words
    with pytest.warns(UserWarning, match=r"max_length=8.*prompt 1: 20 tokens"):
        ids, mask = tokenizer.encode(["a bag", long], max_length=8)
    assert mask[1].all() and ids[1, -1] == tokenizer.eos_id
    assert tokenizer.decode(ids[1:]) == ["a drawing of the number seven"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tokenizer.encode(["a bag"], max_length=8)


def test_parameter_paths_follow_clip_text_model():
    enc = CLIPTextEncoder(**TINY)
    got = paths(jax.eval_shape(enc.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32)))
    expected = {
        "params/embeddings/token_embedding/embedding",
        "params/embeddings/position_embedding/embedding",
        "params/encoder/layers_0/layer_norm1/scale",
        "params/encoder/layers_0/self_attn/q_proj/kernel",
        "params/encoder/layers_0/self_attn/k_proj/bias",
        "params/encoder/layers_0/self_attn/v_proj/kernel",
        "params/encoder/layers_0/self_attn/out_proj/kernel",
        "params/encoder/layers_1/layer_norm2/bias",
        "params/encoder/layers_1/mlp/fc1/kernel",
        "params/encoder/layers_1/mlp/fc2/bias",
        "params/final_layer_norm/scale",
    }
    assert expected <= got, sorted(expected - got)
    assert not any("layers_2" in p for p in got)


def _np_layer_norm(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def _np_clip(params, ids, heads, mask=None):
    """CLIP text forward in float64 numpy, from the architecture's description."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    dense = lambda x, q: x @ q["kernel"] + q["bias"]
    b, n = ids.shape
    h = p["embeddings"]["token_embedding"]["embedding"][ids]
    h = h + p["embeddings"]["position_embedding"]["embedding"][:n][None]
    allowed = np.tril(np.ones((n, n), bool))[None, None] & (
        True if mask is None else mask.astype(bool)[:, None, None, :]
    )
    layers = sorted(p["encoder"], key=lambda k: int(k.split("_")[1]))
    outs = [h]
    for name in layers:
        lp = p["encoder"][name]
        a = _np_layer_norm(h, lp["layer_norm1"])
        d = a.shape[-1]
        q, k, v = (
            dense(a, lp["self_attn"][f"{c}_proj"])
            .reshape(b, n, heads, d // heads)
            .transpose(0, 2, 1, 3)
            for c in "qkv"
        )
        logits = np.where(allowed, q @ k.transpose(0, 1, 3, 2) / np.sqrt(d // heads), -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        att = (w @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
        h = h + dense(att, lp["self_attn"]["out_proj"])
        m = dense(_np_layer_norm(h, lp["layer_norm2"]), lp["mlp"]["fc1"])
        m = m / (1 + np.exp(-1.702 * m))
        h = h + dense(m, lp["mlp"]["fc2"])
        outs.append(h)
    return _np_layer_norm(h, p["final_layer_norm"]), _np_layer_norm(outs[-2], p["final_layer_norm"])


def test_encoder_matches_a_float64_numpy_forward_pass():
    enc, p = _encoder(seed=1)
    rng = np.random.default_rng(2)
    ids = rng.integers(4, 40, size=(2, 7))
    mask = np.array([[1] * 7, [1] * 4 + [0] * 3])
    out = jax.jit(lambda i, m: enc.apply({"params": p}, i, m))(jnp.asarray(ids), jnp.asarray(mask))
    last, pen = _np_clip(p, ids, heads=4, mask=mask)
    np.testing.assert_allclose(out.last_hidden_state, last, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.penultimate, pen, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        quick_gelu(jnp.array([1.0])), [1.0 / (1 + np.exp(-1.702))], rtol=1e-6
    )


def test_penultimate_is_the_one_layer_shorter_model():
    enc, p = _encoder()
    ids = jnp.asarray(np.random.default_rng(3).integers(0, 40, size=(2, 8)))
    short = CLIPTextEncoder(**{**TINY, "num_layers": 1})
    p1 = {**p, "encoder": {"layers_0": p["encoder"]["layers_0"]}}
    np.testing.assert_allclose(
        enc.apply({"params": p}, ids).penultimate,
        short.apply({"params": p1}, ids).last_hidden_state,
        rtol=1e-5,
        atol=1e-5,
    )


def test_causal_mask_position_i_ignores_later_tokens():
    enc, p = _encoder()
    f = jax.jit(lambda i: enc.apply({"params": p}, i).last_hidden_state)
    ids = jnp.asarray(np.random.default_rng(4).integers(0, 40, size=(1, 8)))
    base = f(ids)
    changed = f(ids.at[:, 5:].set((ids[:, 5:] + 7) % 40))
    np.testing.assert_allclose(changed[:, :5], base[:, :5], rtol=1e-6, atol=1e-6)
    assert float(jnp.abs(changed[:, 5:] - base[:, 5:]).min()) > 1e-3


def test_padding_changes_nothing_at_real_tokens_under_the_mask():
    # Bidirectional, so the padding would leak into every position without the mask.
    enc, p = _encoder(causal=False, eos_token_id=2)
    f = jax.jit(lambda i, m: enc.apply({"params": p}, i, m))
    ids = jnp.array([[1, 10, 11, 12, 2, 0, 0, 0], [1, 13, 2, 0, 0, 0, 0, 0]])
    mask = (jnp.arange(8)[None] < jnp.array([[5], [3]])).astype(jnp.int32)
    other = jnp.where(mask == 1, ids, 30)
    base, moved = f(ids, mask), f(other, mask)
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(
        np.asarray(moved.last_hidden_state)[real],
        np.asarray(base.last_hidden_state)[real],
        atol=1e-5,
    )
    np.testing.assert_allclose(moved.pooled, base.pooled, atol=1e-5)
    unmasked = lambda i: enc.apply({"params": p}, i).last_hidden_state
    leak = np.abs(np.asarray(unmasked(other) - unmasked(ids)))[real]
    assert leak.max() > 1e-3


def test_pooled_output_is_the_hidden_state_at_eos():
    ids = jnp.array([[1, 10, 11, 2, 0, 0], [1, 12, 13, 14, 15, 2]])
    enc, p = _encoder(eos_token_id=2)
    out = enc.apply({"params": p}, ids)
    np.testing.assert_array_equal(
        out.pooled, out.last_hidden_state[jnp.arange(2), jnp.array([3, 5])]
    )
    # Without an eos_token_id the pool is at argmax(ids), where OpenAI's vocabulary puts EOS.
    enc_argmax = CLIPTextEncoder(**TINY)
    ids2 = jnp.array([[1, 10, 11, 39, 0, 0], [1, 12, 39, 14, 15, 0]])
    out2 = enc_argmax.apply({"params": p}, ids2)
    np.testing.assert_array_equal(
        out2.pooled, out2.last_hidden_state[jnp.arange(2), jnp.array([3, 2])]
    )
    gelu = CLIPTextEncoder(**{**TINY, "activation": "gelu"}).apply({"params": p}, ids)
    assert float(jnp.abs(gelu.last_hidden_state - out.last_hidden_state).max()) > 1e-4


def test_spatial_transformer_attends_to_the_prompt_not_its_padding(tokenizer):
    enc = CLIPTextEncoder(
        **{**TINY, "vocab_size": tokenizer.vocab_size}, eos_token_id=tokenizer.eos_id
    )
    ids, mask = tokenizer.encode(["a handwritten digit seven", "an ankle boot"], max_length=10)
    p_text = host_params(enc, jnp.asarray(ids), seed=5, scale=2.0)
    st = SpatialTransformer(heads=2, groups=4)
    x = jnp.asarray(np.random.default_rng(6).normal(size=(2, 4, 4, 8)), jnp.float32)
    ctx = jnp.zeros((2, 10, 16))
    p_st = host_params(st, x, ctx, jnp.asarray(mask, bool), seed=7, scale=2.0)

    @jax.jit
    def run(ids, mask):
        context = enc.apply({"params": p_text}, ids, mask).last_hidden_state
        return st.apply({"params": p_st}, x, context, mask.astype(bool))

    base = run(ids, mask)
    # Different padding tokens: hidden states at padded positions change, the output does not.
    repadded = np.where(mask == 1, ids, tokenizer.vocab_size - 1)
    np.testing.assert_allclose(run(repadded, mask), base, atol=1e-5)
    # A different prompt changes the output.
    other, other_mask = tokenizer.encode(["a handwritten digit three", "an ankle boot"], 10)
    diff = np.abs(np.asarray(run(other, other_mask) - base))
    assert diff[0].max() > 1e-2 and diff[1].max() < 1e-5
