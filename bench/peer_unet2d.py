"""The time-to-quality peer: diffusers' UNet2DModel, class-conditional, trained by wall clock.

    python bench/peer_unet2d.py --spec SPEC.json --data DATA.npz --out DIR --t0 T0 \
        --budget_s 300 --marks 30,60,90

bench/time_to_quality.py writes SPEC.json (model shape and training settings from a jldm
config) and DATA.npz (the training images as jldm renders them, NCHW in [-1, 1], their labels,
and the noise schedule's betas from jldm.diffusion.schedules), then starts this process. It
trains eps-prediction MSE with jldm's recipe (class dropout to the null class for guidance,
AdamW b1=0.9 b2=0.99 with linear warmup, global-norm clip, EMA from the initial weights) on
`threads` torch threads, eager, and saves the EMA weights to DIR/mark_I.pt at the first step
that ends past each mark (seconds after T0, a time.time() stamp taken before the process
started) and at the budget, when it stops. DIR/marks.jsonl gets one line per saved mark.
sample() draws class-conditional images with diffusers' DPMSolverMultistepScheduler
(DPM-Solver++ 2M) and classifier-free guidance in one batch. Imports torch and diffusers, not jax.
"""

import argparse
import copy
import json
import os
import time

import numpy as np


def build(spec: dict):
    """UNet2DModel of spec: one ResBlock per level (two on the way up), self-attention blocks
    at spec["attention_levels"] and in the mid block, a class embedding of num_classes + 1
    rows (the last is the null class) added to the time embedding."""
    from diffusers import UNet2DModel

    levels = len(spec["channel_mult"])
    attn = [level in spec["attention_levels"] for level in range(levels)]
    return UNet2DModel(
        sample_size=spec["resolution"],
        in_channels=spec["image_channels"],
        out_channels=spec["image_channels"],
        layers_per_block=spec["num_res_blocks"],
        block_out_channels=tuple(spec["channels"] * k for k in spec["channel_mult"]),
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        # UNet2DModel's attention_head_dim is the width of one head.
        attention_head_dim=spec["channels"] * spec["channel_mult"][-1] // spec["num_heads"],
        norm_num_groups=spec["norm_groups"],
        num_class_embeds=spec["num_classes"] + 1,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def param_count(spec: dict) -> int:
    """The number of parameters of build(spec)."""
    return sum(p.numel() for p in build(spec).parameters())


def _batches(num: int, batch: int, seed: int):
    """Index batches [batch] of a stream of per-epoch permutations of range(num)."""
    rng = np.random.default_rng(seed)
    buf = np.empty(0, np.int64)
    while True:
        while len(buf) < batch:
            buf = np.concatenate([buf, rng.permutation(num)])
        yield buf[:batch]
        buf = buf[batch:]


def train(spec: dict, data: str, out: str, t0: float, budget_s: float, marks: list[float]):
    """Train until budget_s seconds after t0, saving the EMA at each mark; see the docstring."""
    import torch

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    arrays = np.load(data)
    x_all = torch.from_numpy(arrays["images"])
    y_all = torch.from_numpy(arrays["labels"].astype(np.int64))
    abar = torch.from_numpy(np.cumprod(1.0 - arrays["betas"]).astype(np.float32))
    T, null, drop = len(abar), spec["num_classes"], spec["cond_drop"]

    net = build(spec)
    net.train()
    ema = copy.deepcopy(net).requires_grad_(False)
    params, ema_params = list(net.parameters()), list(ema.parameters())
    opt = torch.optim.AdamW(
        params, lr=spec["lr"], betas=(0.9, 0.99), eps=1e-8, weight_decay=spec["weight_decay"]
    )
    # optax's linear warmup from 0: the update of step s (from 0) has lr * s / warmup.
    warmup = max(spec["warmup_steps"], 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(s / warmup, 1.0))
    order = _batches(len(x_all), spec["batch_size"], spec["seed"])
    os.makedirs(out, exist_ok=True)
    log = open(os.path.join(out, "marks.jsonl"), "w")  # noqa: SIM115
    pending = sorted(m for m in marks if m < budget_s) + [budget_s]
    step, saved, first_step_s = 0, 0, None
    while pending:
        idx = torch.from_numpy(next(order))
        x0, y = x_all[idx], y_all[idx]
        y = torch.where(torch.rand(len(y)) < drop, torch.full_like(y, null), y)
        t = torch.randint(0, T, (len(y),))
        noise = torch.randn_like(x0)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = torch.nn.functional.mse_loss(net(x_t, t, class_labels=y).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, spec["grad_clip"], foreach=True)
        opt.step()
        sched.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1.0 - spec["ema_decay"])
        step += 1
        now = time.time() - t0
        if first_step_s is None:
            first_step_s = now
        if now < pending[0]:
            continue
        mark = pending.pop(0)
        while pending and now >= pending[0]:  # marks passed during one step share its weights
            mark = pending.pop(0)
        torch.save(ema.state_dict(), os.path.join(out, f"mark_{saved}.pt"))
        rec = {"mark": saved, "mark_s": mark, "step": step, "seconds": now, "loss": loss.item()}
        log.write(json.dumps({**rec, "first_step_s": first_step_s}) + "\n")
        log.flush()
        saved += 1
    log.close()


def load(spec: dict, path: str):
    """build(spec) with the weights saved at path, in eval mode."""
    import torch

    net = build(spec)
    net.load_state_dict(torch.load(path, map_location="cpu"))
    return net.eval()


def sample(net, spec: dict, labels: np.ndarray, guidance: float, seed: int = 0) -> np.ndarray:
    """Images [N, R, R, C] in [0, 1] of classes labels [N]: DPM-Solver++ 2M on
    spec["timesteps"], eps = eps_null + guidance * (eps_class - eps_null)."""
    import torch
    from diffusers import DPMSolverMultistepScheduler

    torch.set_num_threads(spec["threads"])
    sched = DPMSolverMultistepScheduler(
        num_train_timesteps=len(spec["betas"]),
        trained_betas=np.asarray(spec["betas"]),
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        thresholding=False,
    )
    sched.set_timesteps(timesteps=list(spec["timesteps"]))
    n, r, c = len(labels), spec["resolution"], spec["image_channels"]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, r, r, generator=g) * sched.init_noise_sigma
    y = torch.from_numpy(np.asarray(labels, np.int64))
    both = torch.cat([y, torch.full_like(y, spec["num_classes"])])
    with torch.inference_mode():
        for t in sched.timesteps:
            eps_c, eps_u = net(torch.cat([x, x]), t, class_labels=both).sample.chunk(2)
            x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--spec", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--t0", type=float, required=True, help="time.time() the budget starts at")
    p.add_argument("--budget_s", type=float, required=True)
    p.add_argument("--marks", default="", help="comma-separated seconds after t0")
    a = p.parse_args()
    with open(a.spec) as f:
        spec = json.load(f)
    marks = [float(m) for m in a.marks.split(",") if m]
    train(spec, a.data, a.out, a.t0, a.budget_s, marks)


if __name__ == "__main__":
    main()
