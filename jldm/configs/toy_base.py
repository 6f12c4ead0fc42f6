"""Shared base of the 2-D toy configs: a small ScoreMLP on an exact Gaussian-mixture density.

Run one with `python train.py --config configs/toy_dsm.py --workdir runs/toy_dsm`; each config
sets the objective and its sampler and trains in seconds on a CPU.
"""

import ml_collections

from jldm.configs import default


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = d = ml_collections.ConfigDict()
    d.name = "toy_ring"  # toy_ring | toy_mixture
    d.n_modes = 8  # toy_ring: modes evenly spaced on a circle, the first at (radius, 0)
    d.radius = 4.0  # toy_ring
    d.std = 0.2  # every mode's standard deviation
    d.means = ((0.0, 0.0),)  # toy_mixture: ((x, y), ...), one pair per mode
    d.weights = ()  # () for equal weights, else one positive weight per mode (normalised)

    c.model = m = ml_collections.ConfigDict()
    m.features = 64
    m.depth = 3
    m.embed_dim = 16

    c.diffusion = f = ml_collections.ConfigDict()
    # esm | ism | sliced (clean data) | dsm (one sigma) | ncsn (sigma ladder) | vesde | vpsde |
    # subvpsde (continuous time)
    f.objective = "dsm"
    f.parameterization = "score"  # score | energy (the MLP outputs an energy E, s = -grad_x E)
    f.sigma = 0.1  # dsm
    f.sigma_min = 0.05  # ncsn and vesde; sigma_max ~ the largest distance between modes
    f.sigma_max = 8.0
    f.num_scales = 10  # ncsn ladder length
    f.beta_min = 0.1  # vpsde and subvpsde
    f.beta_max = 20.0
    f.eps_t = 1e-5  # smallest training time of the SDE objectives
    f.n_projections = 1  # sliced
    f.probe = "rademacher"  # sliced: rademacher | gaussian
    f.variance_reduction = True  # sliced: the exact 0.5 |s|^2 term (SSM-VR)

    c.train = t = ml_collections.ConfigDict()
    t.steps = 2000
    t.batch_size = 256
    t.lr = 2e-3
    t.warmup_steps = 100
    t.weight_decay = 0.0
    t.grad_clip = 10.0
    t.ema_decay = 0.99  # short runs: the EMA should average the last few hundred steps only
    t.steps_per_call = 100  # optimizer steps fused in one jitted lax.scan
    t.checkpoint_every = 1000
    t.keep_checkpoints = 2
    t.log_every = 500
    t.skip_nonfinite = False
    # skip_nonfinite: the run stops (after a checkpoint) once more than this fraction of its
    # steps were skipped.
    t.max_skipped_fraction = 0.1
    t.writer = "tensorboard"  # tensorboard | wandb | none: see jldm/configs/default.py

    c.eval = e = ml_collections.ConfigDict()
    e.num = 2000  # fresh draws per noise level for the score error
    e.levels = 10  # SDE objectives: times on a uniform grid over [eps_t, T]

    c.sample = s = ml_collections.ConfigDict()
    # esm/ism/sliced/dsm: langevin only (one noise level); ncsn and the SDEs: every sampler of
    # jldm.build.samplers (ncsn: als by default).
    s.sampler = "langevin"
    s.num = 4000
    s.steps = 500  # langevin steps; the grid points or steps of the others
    s.step_size = 0.005  # langevin
    s.init_std = 4.0  # langevin: chains start from N(0, init_std^2 I)
    s.steps_per_sigma = 100  # als
    s.als_step = 0.08  # als: step size / sigma^2 (2e-4 at sigma_min = 0.05)
    s.snr = 0.16  # pc corrector
    s.corrector_steps = 1  # pc
    s.eta = 0.0  # ddim
    default.solver_settings(s)
    return c
