"""Timestep spacings of diffusers' schedulers, as sigma grids of a discrete model.

A pretrained Stable Diffusion folder samples on the timesteps diffusers' DDIMScheduler visits
(its config's timestep_spacing and steps_offset); any of jldm's samplers can walk them, in the
EDM frame, as they walk their own grids. Past the last timestep the grid ends at alpha_bar = 1
(sigma 0: the clean estimate) when set_alpha_to_one, else at alpha_bar[0].
"""

import numpy as np

SPACINGS = ("leading", "trailing", "linspace")


def timesteps(num_train: int, steps: int, spacing: str, offset: int = 0) -> np.ndarray:
    """The `steps` timesteps of a T = num_train schedule that diffusers visits, descending.
    -> int32 [steps]."""
    t = num_train
    if spacing == "leading":
        ts = np.arange(steps)[::-1] * (t // steps) + offset
    elif spacing == "trailing":
        ts = np.round(np.arange(t, 0, -t / steps)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, t - 1, steps).round()[::-1]
    else:
        raise ValueError(f"timestep spacing {spacing!r}: use one of {SPACINGS}")
    return np.clip(ts, 0, t - 1).astype(np.int32)


def spaced_sigmas(
    levels: np.ndarray, steps: int, spacing: str, offset: int, alpha_one: bool
) -> np.ndarray:
    """The sigmas [steps + 1] of levels (a discrete model's, [T] ascending) at the spacing's
    timesteps, then the end: 0 when alpha_one, else levels[0]. Each step ends where the next
    starts (diffusers' DDIM steps to t - T // steps, which leaves its own grid for trailing and
    linspace spacings; at leading spacing the two agree)."""
    ts = timesteps(len(levels), steps, spacing, offset)
    end = 0.0 if alpha_one else float(levels[0])
    return np.append(np.asarray(levels, np.float64)[ts], end).astype(np.float32)
