"""A diffusers scheduler_config.json as our Schedule, prediction type and timestep grid.

Whatever scheduler class the folder names (PNDM, DDIM, Euler, ...), its config fixes the training
noise schedule; jldm samples that schedule with its own DDIM / ancestral steps. The inference
timesteps follow diffusers' DDIM rules (timestep_spacing, steps_offset, set_alpha_to_one) so a
step here lands on the same timesteps as diffusers' DDIMScheduler.
"""

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from jldm.diffusion import spacing as spacings
from jldm.diffusion.schedules import Schedule, make_schedule, schedule_of_betas
from jldm.errors import UserError

_PREDICTION = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}


class SchedulerSpec(NamedTuple):
    """Training schedule and the rules diffusers' DDIMScheduler uses to pick timesteps."""

    schedule: Schedule
    prediction: str  # eps | v | x0
    timestep_spacing: str
    steps_offset: int
    set_alpha_to_one: bool
    clip_sample: bool

    @property
    def num_train_timesteps(self) -> int:
        """T, the number of training timesteps."""
        return self.schedule.num_timesteps


def scheduler_from_config(cfg: Mapping) -> SchedulerSpec:
    """Map scheduler_config.json (beta_schedule, prediction_type, ...) to a SchedulerSpec."""
    t = int(cfg.get("num_train_timesteps", 1000))
    pred = cfg.get("prediction_type", "epsilon")
    if pred not in _PREDICTION:
        raise UserError(
            f"scheduler_config.json has prediction_type={pred!r}: use one of {sorted(_PREDICTION)}"
        )
    for key in ("thresholding", "rescale_betas_zero_snr"):
        if cfg.get(key, False):
            raise UserError(f"scheduler_config.json has {key}=true, which jldm does not implement")
    spacing = cfg.get("timestep_spacing", "leading")
    if spacing not in spacings.SPACINGS:
        raise UserError(
            f"scheduler_config.json has timestep_spacing={spacing!r}: use one of "
            f"{spacings.SPACINGS}"
        )
    if cfg.get("clip_sample", True) and float(cfg.get("clip_sample_range", 1.0)) != 1.0:
        raise UserError("scheduler_config.json: clip_sample_range other than 1.0 is not supported")
    trained = cfg.get("trained_betas")
    if trained is not None:
        schedule = schedule_of_betas(trained)
    else:
        kind = cfg.get("beta_schedule", "linear")
        if kind not in _BETAS:
            raise UserError(
                f"scheduler_config.json has beta_schedule={kind!r}: use one of {sorted(_BETAS)}"
            )
        schedule = make_schedule(
            _BETAS[kind], t, float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
        )
    return SchedulerSpec(
        schedule=schedule,
        prediction=_PREDICTION[pred],
        timestep_spacing=spacing,
        steps_offset=int(cfg.get("steps_offset", 0)),
        set_alpha_to_one=bool(cfg.get("set_alpha_to_one", True)),
        # DDIMScheduler's default: clip x0 to [-1, 1] unless the config says otherwise.
        clip_sample=bool(cfg.get("clip_sample", True)),
    )


def inference_timesteps(spec: SchedulerSpec, steps: int) -> np.ndarray:
    """The `steps` timesteps diffusers' DDIMScheduler visits, descending. -> int32 [steps]."""
    t = spec.num_train_timesteps
    if not 1 <= steps <= t:
        raise UserError(f"--steps={steps} must be in 1..{t} (the schedule's training timesteps)")
    return spacings.timesteps(t, steps, spec.timestep_spacing, spec.steps_offset)


def inference_pairs(spec: SchedulerSpec, steps: int, alpha_one_at_end: bool | None = None):
    """(t, t_prev) per step, int32 [steps, 2], for ddim_step: t_prev = -1 means alpha_bar = 1.

    As in diffusers, t_prev = t - T // steps. Past the start, alpha_bar is 1 when
    alpha_one_at_end (default: the config's set_alpha_to_one), else alpha_bar[0].
    """
    ts = inference_timesteps(spec, steps)
    prev = ts.astype(np.int64) - spec.num_train_timesteps // steps
    one = spec.set_alpha_to_one if alpha_one_at_end is None else alpha_one_at_end
    prev = np.where(prev >= 0, prev, -1 if one else 0)
    return np.stack([ts, prev], axis=1).astype(np.int32)
