"""Importing diffusers Stable Diffusion folders: parity with diffusers/transformers on tiny random
SD-1.x- and SD-2.x-shaped models (UNet, VAE, CLIP text encoder, DDIM steps, the whole
text-to-image pipeline), the Orbax cache, one-line errors, and sample.py --pretrained."""

import json
import os
import shutil
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from safetensors.numpy import load_file, save_file  # noqa: E402

from jldm.build import samplers as sampler_registry  # noqa: E402
from jldm.convert.folder import load_tensors, read_config  # noqa: E402
from jldm.convert.models import convert_unet, unet_from_config  # noqa: E402
from jldm.convert.pipeline import default_cache, load_pretrained  # noqa: E402
from jldm.convert.scheduler import inference_pairs, inference_timesteps  # noqa: E402
from jldm.convert.scheduler import scheduler_from_config as sched_cfg  # noqa: E402
from jldm.data.captions import CaptionTokenizer  # noqa: E402
from jldm.diffusion import solvers  # noqa: E402
from jldm.diffusion.frame import discrete_frame  # noqa: E402
from jldm.errors import UserError  # noqa: E402
from jldm.runs.pretrained import as_run  # noqa: E402
from jldm.sampling.pipeline import make_generator  # noqa: E402
from jldm.sampling.pretrained import generate_text_to_image  # noqa: E402
from jldm.sampling.run import conditions  # noqa: E402
from tests.clitools import assert_user_error, cli  # noqa: E402
from tests.sd_tiny import MAX_LENGTH, build_folder, randomize, unet_kwargs  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-4
PROMPTS = ["a photo of the red cat", "dog on mat"]


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref|."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


def nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def sd(request, tmp_path_factory):
    """(flavour, folder, torch models, converted pipeline) for one tiny random SD folder."""
    root = str(tmp_path_factory.mktemp(request.param))
    models = build_folder(root, request.param, seed=1 if request.param == "sd1" else 2)
    return request.param, root, models, load_pretrained(root)


def _unet_err(torch_unet, spec, params) -> float:
    """rel_err of our UNet against diffusers' on random latents, two timesteps, a context."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, spec.context_dim)).astype(np.float32)
    t = np.array([3, 917])
    with torch.no_grad():
        ref = torch_unet(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx))
    ours = spec.model.apply({"params": params}, x.transpose(0, 2, 3, 1), t, ctx)
    return rel_err(nchw(ours), ref.sample.numpy())


def test_unet_matches_diffusers(sd):
    _, _, models, pipe = sd
    assert _unet_err(models["unet"], pipe.unet, pipe.params["unet"]) < TOL


def test_unet_with_a_head_count_per_level_matches_diffusers(tmp_path):
    from diffusers import UNet2DConditionModel

    # SD-2 layout; head widths 8, 4 at the attention levels and 8 in the mid block (counts[-1]).
    torch.manual_seed(5)
    unet = UNet2DConditionModel(**dict(unet_kwargs("sd2"), attention_head_dim=(2, 8, 4))).eval()
    randomize(unet, 5)
    unet.save_pretrained(str(tmp_path / "unet"))
    spec = unet_from_config(read_config(str(tmp_path), "unet"))
    assert spec.model.num_heads == (2, 8, 4) and spec.model.head_dim == 0
    tensors, src = load_tensors(str(tmp_path), "unet")
    assert _unet_err(unet, spec, convert_unet(tensors, spec, src)) < TOL


def test_vae_encoder_and_decoder_match_diffusers(sd):
    _, _, models, pipe = sd
    rng = np.random.default_rng(1)
    img = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    z = rng.standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        post = models["vae"].encode(torch.from_numpy(img)).latent_dist
        dec = models["vae"].decode(torch.from_numpy(z)).sample.numpy()
    vae, params = pipe.vae.model, {"params": pipe.params["vae"]}
    ours = vae.apply(params, img.transpose(0, 2, 3, 1), method=vae.encode)
    assert rel_err(nchw(ours.mean), post.mean.numpy()) < TOL
    assert rel_err(nchw(ours.logvar), post.logvar.numpy()) < TOL
    out = vae.apply(params, z.transpose(0, 2, 3, 1), method=vae.decode)
    assert rel_err(nchw(out), dec) < TOL


def test_text_encoder_matches_transformers(sd):
    flavour, _, models, pipe = sd
    tok = models["tokenizer"]
    enc = tok(PROMPTS, padding="max_length", max_length=MAX_LENGTH, return_tensors="np")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    params = {"params": pipe.params["text_encoder"]}
    for m in (None, mask):
        with torch.no_grad():
            ref = models["text_encoder"](
                torch.from_numpy(ids), None if m is None else torch.from_numpy(m)
            )
        ours = pipe.text_encoder.apply(params, ids, m)
        assert rel_err(ours.last_hidden_state, ref.last_hidden_state.numpy()) < TOL
        assert rel_err(ours.pooled, ref.pooler_output.numpy()) < TOL
    # SD 1.x pools at argmax(ids) (transformers' rule for eos id 2), SD 2.x at its EOS id.
    assert (pipe.text_encoder.eos_token_id is None) == (flavour == "sd1")


def test_configs_become_our_modules(sd):
    flavour, _, _, pipe = sd
    unet = pipe.unet.model
    assert unet.channel_mult == (1, 2, 2) and unet.attention_levels == (0, 1)
    if flavour == "sd1":
        assert (unet.num_heads, unet.head_dim, unet.use_linear_projection) == (2, 0, False)
        assert pipe.scheduler.prediction == "eps" and pipe.vae.scaling_factor == 0.18215
    else:
        assert (unet.num_heads, unet.use_linear_projection) == ((2, 4, 4), True)
        assert pipe.scheduler.prediction == "v" and pipe.vae.scaling_factor == 0.5
    assert not pipe.scheduler.set_alpha_to_one and pipe.scheduler.steps_offset == 1


def _scheduler_configs(root):
    with open(os.path.join(root, "scheduler", "scheduler_config.json")) as f:
        base = json.load(f)
    yield base
    yield dict(base, timestep_spacing="trailing", set_alpha_to_one=True, steps_offset=0)
    yield dict(base, timestep_spacing="linspace", beta_schedule="linear", beta_end=0.02)
    yield dict(base, clip_sample=True)  # x0 clipped to [-1, 1] (DDPM-style folders)


def test_ddim_steps_match_diffusers_scheduler(sd):
    """Each (t, t_prev) of diffusers' grid as the frame's ancestral step: xbar = x / sqrt(abar_t),
    solvers.ancestral over [sigma_t, sigma_t_prev] on the discrete frame's denoiser of the
    network's output, x = xbar sqrt(abar_t_prev). The frame takes its noise estimate from the
    (clipped) x0, as DDIMScheduler.step with use_clipped_model_output=True; without clipping that
    is also its default. variance_noise is the z the step draws from its key."""
    from diffusers import DDIMScheduler

    _, root, _, _ = sd
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    out = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    key = jax.random.PRNGKey(3)
    # frame.scan_grid's draw for the first step of a grid: fold_in(split(key)[0], 0)
    noise = np.array(jax.random.normal(jax.random.fold_in(jax.random.split(key)[0], 0), x.shape))
    for cfg in _scheduler_configs(root):
        ref = DDIMScheduler.from_config(cfg)
        spec = sched_cfg(cfg)
        ref.set_timesteps(10)
        np.testing.assert_array_equal(inference_timesteps(spec, 10), ref.timesteps.numpy())
        frame = discrete_frame(spec.schedule, spec.prediction, spec.clip_sample)
        d = frame.denoiser(lambda x, t: jnp.asarray(out))
        abar = np.append(np.asarray(spec.schedule.alphas_cumprod, np.float64), 1.0)  # [-1]: 1
        for t, t_prev in inference_pairs(spec, 10)[[0, 4, 9]]:
            pair = abar[[t, t_prev]]
            sigmas = jnp.asarray(np.sqrt(1.0 / pair - 1.0), jnp.float32)
            scale = np.sqrt(pair).astype(np.float32)
            for eta in (0.0, 1.0):
                xbar = solvers.ancestral(d, jnp.asarray(x / scale[0]), sigmas, key, None, eta)
                got = np.asarray(xbar) * scale[1]
                for clipped_eps in (True,) if spec.clip_sample else (True, False):
                    want = ref.step(
                        torch.from_numpy(out),
                        int(t),
                        torch.from_numpy(x),
                        eta=eta,
                        use_clipped_model_output=clipped_eps,
                        variance_noise=torch.from_numpy(noise),
                    ).prev_sample.numpy()
                    where = (cfg.get("timestep_spacing"), spec.clip_sample, t, eta, clipped_eps)
                    assert rel_err(got, want) < TOL, where


def test_text_to_image_matches_diffusers_pipeline(sd):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    flavour, root, models, pipe = sd
    if flavour == "sd1":
        pytest.skip("parts are compared for both flavours; the whole pipeline once (v-prediction)")
    scheduler = DDIMScheduler.from_pretrained(os.path.join(root, "scheduler"))
    ref_pipe = StableDiffusionPipeline(
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=models["tokenizer"],
        unet=models["unet"],
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    ref_pipe.set_progress_bar_config(disable=True)
    latents = np.random.default_rng(3).standard_normal((2, 4, 8, 8)).astype(np.float32)
    negative = ["", "blue"]
    with torch.no_grad():
        ref = ref_pipe(
            prompt=PROMPTS,
            negative_prompt=negative,
            num_inference_steps=3,
            guidance_scale=7.5,
            height=16,
            width=16,
            latents=torch.from_numpy(latents),
            output_type="np",
        ).images
    # The folder as a run, through the one sampling pipeline: the leading-spacing timesteps of
    # its scheduler as the grid, the same start latents.
    run = as_run(pipe)
    ids = conditions(run, prompts=PROMPTS)
    tok = models["tokenizer"]
    want_ids = tok(PROMPTS, padding="max_length", max_length=MAX_LENGTH, return_tensors="np")
    np.testing.assert_array_equal(ids, want_ids["input_ids"])
    gen = make_generator(
        run,
        ids,
        sampler="ddim",
        steps=3,
        guidance=7.5,
        null=conditions(run, prompts=negative),
        size=(16, 16),
        z=latents.transpose(0, 2, 3, 1),
    )
    ours = gen(jax.random.PRNGKey(0))
    assert rel_err(ours, ref) < TOL


def test_every_sampler_on_the_pretrained_run(sd):
    flavour, _, _, pipe = sd
    if flavour == "sd1":
        pytest.skip("one flavour (v-prediction) is enough")
    run = as_run(pipe)
    ids = conditions(run, prompts=PROMPTS)
    null = conditions(run, prompts=["", "blue"])
    z = np.random.default_rng(4).standard_normal((2, 8, 8, 4)).astype(np.float32)

    def images(sampler):  # one compiled program, two keys
        gen = make_generator(
            run, ids, sampler=sampler, steps=3, guidance=7.5, null=null, size=(16, 16), z=z
        )
        out = [np.asarray(gen(jax.random.PRNGKey(k))) for k in (0, 1)]
        assert np.all(np.isfinite(out)) and np.min(out) >= 0 and np.max(out) <= 1, sampler
        return out

    ode, pc = images("ode"), images("pc")
    np.testing.assert_array_equal(ode[0], ode[1])  # the flow draws no noise
    assert np.abs(pc[0] - pc[1]).max() > 1e-4  # pc does
    # The other samplers walk the same diffusers timesteps of the run's config and frame; the
    # guided UNet and the VAE around them are the pipeline's (ddim in the parity tests above,
    # ode and pc here). On a stand-in network (a compile each instead of one of the whole
    # model; each sampler also runs on exact models in test_sampler_contract): finite, and
    # noise only where the sampler draws it.
    drawn = {}
    for name in ("ddpm", "heun", "dpmpp2m", "em", "als", "pc"):
        sample = sampler_registry.get(name).build(sampler_registry.Plan(run.config, z.shape, 2))
        go = jax.jit(lambda k, s=sample: s(lambda x, t: 0.1 * x, k, z=z))
        a, b = np.asarray(go(jax.random.PRNGKey(0))), np.asarray(go(jax.random.PRNGKey(1)))
        assert a.shape == z.shape and np.isfinite(a).all() and np.isfinite(b).all(), name
        if name in ("heun", "dpmpp2m"):
            np.testing.assert_array_equal(a, b)
        else:
            assert np.abs(a - b).max() > 1e-4, name
        drawn[name] = a
    # Reverse-SDE steps with a Langevin corrector are not the ancestral step, on the same key.
    assert np.abs(drawn["pc"] - drawn["ddpm"]).max() > 1e-4


def test_orbax_cache_reloads_and_follows_the_weights(sd):
    flavour, root, _, first = sd
    if flavour == "sd2":
        pytest.skip("the cache does not depend on the flavour")
    again = load_pretrained(root)
    assert again.source == "cache"
    cache = default_cache(root)
    assert cache.startswith(os.environ["JLDM_CACHE_DIR"] + os.sep) and os.path.isdir(cache)
    same = jax.tree_util.tree_map(lambda a, b: bool(jnp.all(a == b)), first.params, again.params)
    assert all(jax.tree_util.tree_leaves(same))
    # A changed weight file invalidates the cache.
    path = os.path.join(root, "vae", "diffusion_pytorch_model.safetensors")
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_pretrained(root).source == "converted"
    assert load_pretrained(root).source == "cache"


def _copy(root, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(root, dst)
    return dst


def _edit_unet(folder, edit):
    path = os.path.join(folder, "unet", "diffusion_pytorch_model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def _one_line_error(folder, *words):
    with pytest.raises(UserError) as e:
        load_pretrained(folder, cache=False)
    msg = str(e.value)
    assert "\n" not in msg, msg
    for w in words:
        assert w in msg, msg


def test_missing_unexpected_and_mismatched_tensors_are_named(sd, tmp_path):
    flavour, root, _, _ = sd
    if flavour == "sd2":
        pytest.skip("the error paths do not depend on the flavour")
    folder = _copy(root, tmp_path)
    key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    _edit_unet(folder, lambda t: t.pop(key))
    _one_line_error(folder, "unet", key, "missing")
    _edit_unet(folder, lambda t: t.update({key: np.zeros((32, 7), np.float32)}))
    _one_line_error(folder, "unet", key, "(32, 7)", "config")
    _edit_unet(folder, lambda t: t.update({key: np.zeros((32, 32), np.float32), "extra.w": t[key]}))
    _one_line_error(folder, "unet", "unexpected", "extra.w")
    with open(os.path.join(folder, "unet", "config.json")) as f:
        cfg = json.load(f)
    with open(os.path.join(folder, "unet", "config.json"), "w") as f:
        json.dump(dict(cfg, class_embed_type="timestep"), f)
    _one_line_error(folder, "class_embed_type")
    os.remove(os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors"))
    shutil.copy(
        os.path.join(root, "unet", "diffusion_pytorch_model.safetensors"),
        os.path.join(folder, "unet"),
    )
    with open(os.path.join(folder, "unet", "config.json"), "w") as f:
        json.dump(cfg, f)
    _one_line_error(folder, "no .safetensors", "vae")


def test_legacy_vae_attention_names_convert(sd, tmp_path):
    flavour, root, _, pipe = sd
    if flavour == "sd2":
        pytest.skip("one flavour is enough")
    folder = _copy(root, tmp_path)
    path = os.path.join(folder, "vae", "diffusion_pytorch_model.safetensors")
    names = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    old = {}
    for k, v in load_file(path).items():
        for new, legacy in names.items():
            k = k.replace(f".attentions.0.{new}.", f".attentions.0.{legacy}.")
        old[k] = v
    assert any(".query." in k for k in old)
    save_file(old, path)
    legacy = load_pretrained(folder, cache=False)
    same = jax.tree_util.tree_map(
        lambda a, b: bool(jnp.all(a == b)), pipe.params["vae"], legacy.params["vae"]
    )
    assert all(jax.tree_util.tree_leaves(same))


def test_long_prompts_are_truncated_with_a_warning(sd):
    _, _, models, _ = sd
    long = " ".join(["cat"] * 20)
    tok = CaptionTokenizer(models["tokenizer"])
    with pytest.warns(UserWarning, match="truncated"):
        ids, _ = tok.encode([long, "dog"], MAX_LENGTH)
    assert ids.shape == (2, MAX_LENGTH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode(["dog"], MAX_LENGTH)


def test_bad_requests_are_user_errors(sd):
    _, _, _, pipe = sd
    run = as_run(pipe)
    ids = conditions(run, prompts=["cat"])
    with pytest.raises(UserError, match="multiples of 8"):
        make_generator(run, ids, sampler="ddim", steps=2, size=(12, 16))
    with pytest.raises(UserError, match="not known"):
        make_generator(run, ids, sampler="rk45", steps=2)
    with pytest.raises(UserError, match="2 negative prompts for 1"):
        generate_text_to_image(run, ["cat"], negative_prompts=["a", "b"])


def test_sample_cli_pretrained_writes_png(sd, tmp_path):
    flavour, root, _, _ = sd
    if flavour == "sd1":
        pytest.skip("one flavour is enough for the CLI")
    from PIL import Image

    # Same program as the pipeline parity test (batch 2, 3 steps), so its compilation is reused.
    out = str(tmp_path / "t2i.png")
    proc = cli(
        "sample.py",
        f"--pretrained={root}",
        "--prompt=a photo of the red cat",
        "--negative_prompt=blue",
        "--num=2",
        "--steps=3",
        "--guidance=7.5",
        "--height=16",
        "--width=16",
        f"--out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded from the Orbax cache" in proc.stdout, proc.stdout
    img = np.asarray(Image.open(out))
    assert img.ndim == 3 and img.shape[1] > 1.5 * img.shape[0]  # one row of two
    images = np.load(str(tmp_path / "t2i.npz"))["images"]
    assert images.shape == (2, 16, 16, 3)
    assert np.abs(images[0] - images[1]).max() > 1e-3  # each image has its own latents
    bad = cli("sample.py", f"--pretrained={tmp_path}", "--prompt=cat", f"--out={out}x")
    assert_user_error(bad, "unet")
