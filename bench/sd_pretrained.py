"""Stable Diffusion import and text-to-image timings on a random SD-1.5-shaped model.

    python bench/sd_pretrained.py build DIR      # random SD-1.5-shaped diffusers folder (torch)
    python bench/sd_pretrained.py convert DIR    # convert time, then reload time from the cache
    python bench/sd_pretrained.py speed DIR [--batch 8 --steps 50 --size 512 --guidance 7.5]
                                                 # s/image, jldm, then diffusers when torch has CUDA

Prints figures only; never part of the tests. build and the diffusers timing need torch and
diffusers (the test extra); convert and the jldm timing need only jldm.
"""

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PROMPT = "a photo of the red cat on the mat"

# Facts of Stable Diffusion 1.5's published configs (shapes only; the weights here are random).
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    eos_token_id=2,
)


def build(root: str) -> None:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.sd_tiny import write_scheduler, write_tokenizer

    torch.manual_seed(0)
    t0 = time.perf_counter()
    write_tokenizer(os.path.join(root, "tokenizer"), "<|endoftext|>", max_length=77)
    write_scheduler(os.path.join(root, "scheduler"), "sd1")
    UNet2DConditionModel(**SD15_UNET).save_pretrained(os.path.join(root, "unet"))
    AutoencoderKL(**SD15_VAE).save_pretrained(os.path.join(root, "vae"))
    CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).save_pretrained(os.path.join(root, "text_encoder"))
    print(f"built {root} in {time.perf_counter() - t0:.1f} s")


def convert(root: str) -> None:
    import shutil

    from jldm.convert.pipeline import default_cache, load_pretrained

    shutil.rmtree(default_cache(root), ignore_errors=True)
    t0 = time.perf_counter()
    first = load_pretrained(root)
    total = time.perf_counter() - t0
    n = sum(x.size for x in __import__("jax").tree_util.tree_leaves(first.params))
    print(
        f"convert: {first.load_seconds:.1f} s ({n / 1e6:.0f} M params), "
        f"with writing the Orbax cache {total:.1f} s"
    )
    del first
    t0 = time.perf_counter()
    again = load_pretrained(root)
    print(f"reload from the Orbax cache: {time.perf_counter() - t0:.1f} s ({again.source})")


def speed_jldm(root: str, batch: int, steps: int, size: int, guidance: float) -> float:
    import jax

    from jldm.runs.pretrained import default_compute_dtype, load_pretrained_run
    from jldm.sampling.pipeline import make_generator
    from jldm.sampling.run import conditions

    dtype = default_compute_dtype()
    run = load_pretrained_run(root, dtype=dtype)
    ids = conditions(run, prompts=[PROMPT] * batch)
    null = conditions(run, prompts=[""] * batch)
    gen = make_generator(
        run, ids, sampler="ddim", steps=steps, guidance=guidance, null=null, size=(size, size)
    )
    key = jax.random.PRNGKey(0)
    go, args = gen.fn, gen.args(key)
    t0 = time.perf_counter()
    compiled = go.lower(*args).compile()
    print(f"jldm compile: {time.perf_counter() - t0:.1f} s ({jax.numpy.dtype(dtype).name})")
    compiled(*args).block_until_ready()  # warm-up
    t0 = time.perf_counter()
    compiled(*args).block_until_ready()
    per = (time.perf_counter() - t0) / batch
    print(f"jldm: {per:.3f} s/image ({batch} x {size}^2, {steps} DDIM steps, cfg {guidance})")
    return per


def speed_diffusers(root: str, batch: int, steps: int, size: int, guidance: float) -> float:
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if not torch.cuda.is_available():
        print("diffusers: skipped (torch has no CUDA device here)")
        return float("nan")
    pipe = StableDiffusionPipeline.from_pretrained(
        root, torch_dtype=torch.float16, safety_checker=None, requires_safety_checker=False
    ).to("cuda")
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    run = lambda: pipe(
        [PROMPT] * batch, num_inference_steps=steps, guidance_scale=guidance,
        height=size, width=size, output_type="np",
    )  # fmt: skip
    run()  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    torch.cuda.synchronize()
    per = (time.perf_counter() - t0) / batch
    print(f"diffusers (fp16): {per:.3f} s/image")
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["build", "convert", "speed"])
    ap.add_argument("dir")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--skip_diffusers", action="store_true")
    a = ap.parse_args()
    if a.what == "build":
        build(a.dir)
    elif a.what == "convert":
        convert(a.dir)
    else:
        ours = speed_jldm(a.dir, a.batch, a.steps, a.size, a.guidance)
        if not a.skip_diffusers:
            theirs = speed_diffusers(a.dir, a.batch, a.steps, a.size, a.guidance)
            if theirs == theirs:
                print(f"jldm / diffusers time ratio: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
