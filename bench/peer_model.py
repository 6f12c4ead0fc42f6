"""diffusers' UNet2DConditionModel built from a jldm config, and its benchmark calls (no flags).

Shared by bench/peer_diffusers.py and bench/vs_diffusers.py. The model has the shape of
config.model (channels, multipliers, ResBlocks, attention levels, heads, context width and
tokens, norm groups), randomly initialised, with jldm's parameter count; its context is random
[B, tokens, width] (jldm embeds class labels into that shape). Compute is bf16 autocast when
config.model.dtype is bfloat16, float32 otherwise. The train step does what jldm's does:
noising, MSE, backward, global-norm clip, AdamW and an EMA of the params; sampling runs
diffusers' DDIM/DDPM schedulers in a Python loop. torch and diffusers are imported only when
a function needs them.
"""


def build_unet(config):
    """diffusers' UNet2DConditionModel with the shape of config.model."""
    from diffusers import UNet2DConditionModel

    m, d = config.model, config.data
    levels = len(m.channel_mult)
    attn = [level in m.attention_levels for level in range(levels)]
    return UNet2DConditionModel(
        sample_size=d.resolution,
        in_channels=d.channels,
        out_channels=d.channels,
        layers_per_block=m.num_res_blocks,
        block_out_channels=tuple(m.channels * k for k in m.channel_mult),
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        mid_block_type="UNetMidBlock2DCrossAttn",
        cross_attention_dim=m.context_dim,
        # diffusers' SD-1.x configs name the head count attention_head_dim.
        attention_head_dim=m.num_heads,
        transformer_layers_per_block=m.transformer_depth,
        norm_num_groups=m.norm_groups,
        use_linear_projection=m.use_linear_projection,
        flip_sin_to_cos=True,
        freq_shift=0,
    )


class Peer:
    """A UNet, its inputs and its training state on one torch device."""

    def __init__(self, config, batch: int, device: str, mode: str):
        import torch

        self.torch, self.config, self.batch, self.device = torch, config, batch, device
        if device.startswith("cuda"):  # float32 matmuls and convolutions may use TF32
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(config.seed)
        self.module = build_unet(config).to(device)
        self.net = torch.compile(self.module) if mode == "compile" else self.module
        self.bf16 = config.model.dtype == "bfloat16"
        d, m = config.data, config.model
        g = torch.Generator(device="cpu").manual_seed(0)
        self.x0 = torch.rand(batch, d.channels, d.resolution, d.resolution, generator=g) * 2 - 1
        self.x0 = self.x0.to(device)
        self.context = torch.randn(batch, m.context_tokens, m.context_dim, generator=g).to(device)
        betas = self._betas()
        self.abar = torch.cumprod(1 - betas, 0).to(device)

    def _betas(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(**self.scheduler_kwargs()).betas.float()

    def scheduler_kwargs(self) -> dict:
        f = self.config.diffusion
        names = {
            "linear": "linear",
            "scaled_linear": "scaled_linear",
            "cosine": "squaredcos_cap_v2",
        }
        return dict(
            num_train_timesteps=f.timesteps,
            beta_start=f.beta_start,
            beta_end=f.beta_end,
            beta_schedule=names[f.schedule],
            prediction_type={"eps": "epsilon", "x0": "sample", "v": "v_prediction"}[f.prediction],
        )

    def autocast(self):
        return self.torch.autocast(
            device_type=self.device.split(":")[0], dtype=self.torch.bfloat16, enabled=self.bf16
        )

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            self.torch.cuda.synchronize()

    def eval_call(self):
        torch = self.torch
        self.module.eval()
        t = torch.randint(0, self.config.diffusion.timesteps, (self.batch,), device=self.device)

        def call():
            with torch.inference_mode(), self.autocast():
                out = self.net(self.x0, t, encoder_hidden_states=self.context).sample
            self.sync()
            return out

        return call

    def train_call(self):
        torch, t = self.torch, self.config.train
        self.module.train()
        params = [p for p in self.module.parameters() if p.requires_grad]
        fused = self.device.startswith("cuda")
        opt = torch.optim.AdamW(
            params, lr=t.lr, betas=(0.9, 0.99), weight_decay=t.weight_decay, fused=fused
        )
        ema = [p.detach().clone() for p in params]
        T = self.config.diffusion.timesteps

        def call():
            ts = torch.randint(0, T, (self.batch,), device=self.device)
            noise = torch.randn_like(self.x0)
            a = self.abar[ts].view(-1, 1, 1, 1)
            x_t = a.sqrt() * self.x0 + (1 - a).sqrt() * noise
            with self.autocast():
                out = self.net(x_t, ts, encoder_hidden_states=self.context).sample
            loss = torch.nn.functional.mse_loss(out.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.grad_clip, foreach=True)
            opt.step()
            with torch.no_grad():
                torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - t.ema_decay)
            self.sync()

        return call

    def sample_call(self, sampler: str, steps: int, num: int):
        from diffusers import DDIMScheduler, DDPMScheduler

        torch, d, m = self.torch, self.config.data, self.config.model
        self.module.eval()
        kw = self.scheduler_kwargs()
        if sampler == "ddim":
            sched = DDIMScheduler(**kw, clip_sample=True)
            sched.set_timesteps(steps)
        else:
            sched = DDPMScheduler(**kw, clip_sample=True)
            sched.set_timesteps(kw["num_train_timesteps"])
        context = torch.randn(num, m.context_tokens, m.context_dim, device=self.device)
        # jldm's DDIM takes eps from the clipped x0: (xbar - D) / sigma in the EDM frame
        # (jldm.diffusion.solvers.ancestral)
        step_kw = {"use_clipped_model_output": True} if sampler == "ddim" else {}

        def call():
            x = torch.randn(num, d.channels, d.resolution, d.resolution, device=self.device)
            with torch.inference_mode(), self.autocast():
                for t in sched.timesteps:
                    eps = self.net(x, t.to(self.device), encoder_hidden_states=context).sample
                    x = sched.step(eps.float(), t, x, **step_kw).prev_sample
            self.sync()

        return call
