"""The shared base config: every other config starts from get_config() here."""

import ml_collections


def solver_settings(s: ml_collections.ConfigDict) -> None:
    """The sample settings every run shares: where grids start and end, and heun's."""
    # Every grid starts at min(this, the process's largest sigma) in the EDM frame: above ~80
    # a unit-scale image is pure noise.
    s.sigma_start = 80.0
    s.eps = 1e-3  # SDE and flow objectives: the grid's smallest time t, then one step to t = 0
    s.rho = 7.0  # heun: exponent of the Karras et al. sigma grid
    s.s_churn = 0.0  # heun: stochastic churn; 0 = the deterministic ODE solver
    s.s_tmin = 0.0  # heun: churn only where s_tmin <= sigma <= s_tmax
    s.s_tmax = float("inf")
    s.s_noise = 1.0  # heun: scale of the churn noise
    # Discrete (ddpm) models: every sampler walks diffusers' timesteps instead of its own grid
    # when set: "" (off) | leading | trailing | linspace, shifted by steps_offset; past the last
    # one the grid ends at alpha_bar = 1 if set_alpha_to_one, else at alpha_bar[0]. A pretrained
    # Stable Diffusion folder takes its scheduler_config.json's values.
    s.timestep_spacing = ""
    s.steps_offset = 0
    s.set_alpha_to_one = True


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = d = ml_collections.ConfigDict()
    d.name = "digits"  # digits | fashion_mnist | any TFDS catalog name prepared in data_dir
    d.data_dir = "~/tensorflow_datasets"
    d.fashion_dir = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist
    d.resolution = 16
    d.channels = 1
    d.num_classes = 10
    d.random_flip = False  # mirror about half of each batch left-right (by seed and step)
    d.threads = 4  # worker threads that read and prepare the batches ahead of the step
    # Latent diffusion: a local folder for the training set's stage-1 encodings (written once);
    # empty: WORKDIR/latents.
    d.latent_dir = ""

    c.model = m = ml_collections.ConfigDict()
    m.channels = 64
    m.channel_mult = (1, 2)
    m.num_res_blocks = 1
    m.attention_levels = (1,)  # indices into channel_mult that get a SpatialTransformer
    m.num_heads = 4
    m.transformer_depth = 1
    m.norm_groups = 32
    m.dropout = 0.0
    m.context_dim = 64
    m.context_tokens = 1  # class label -> this many context tokens for cross-attention
    m.use_linear_projection = False
    m.dtype = "float32"  # compute dtype; bfloat16 on accelerators
    m.conditioning = "class"  # class: a label embedding; text: captions through text.*
    m.low_res_factor = 1  # > 1: super-resolution, conditioned on the image at 1/f resolution
    # Recompute each ResBlock/transformer in the backward pass: less activation memory for about
    # one more forward per step; same parameters, same loss.
    m.remat = False

    # The CLIP-style text encoder of model.conditioning=text (trained jointly with the UNet).
    c.text = x = ml_collections.ConfigDict()
    x.tokenizer = ""  # a local tokenizer folder; empty: built from the dataset's captions
    x.max_length = 16
    x.width = 64
    x.layers = 2
    x.heads = 4

    c.diffusion = f = ml_collections.ConfigDict()
    # ddpm: discrete-time noise prediction. Score objectives on the same UNet: ncsn (DSM over a
    # geometric sigma ladder), vesde | vpsde | subvpsde (continuous-time DSM); edm (Karras et
    # al.'s preconditioned denoiser); flow (flow matching, velocity on the linear path).
    f.objective = "ddpm"
    f.parameterization = "score"  # score | energy (score objectives: s = -grad_x E)
    f.schedule = "cosine"  # linear | scaled_linear | cosine
    f.timesteps = 1000
    f.beta_start = 1e-4
    f.beta_end = 0.02
    f.prediction = "eps"  # eps | x0 | v
    f.cond_drop = 0.1  # probability of the null condition, for classifier-free guidance
    f.sigma_min = 0.01  # ncsn and vesde noise range; sigma_max ~ the largest data distance
    f.sigma_max = 25.0
    f.num_scales = 20  # ncsn ladder length
    f.beta_min = 0.1  # vpsde and subvpsde
    f.beta_max = 20.0
    f.eps_t = 1e-5  # smallest training time of the SDE objectives
    # edm (Karras et al. 2022; set objective=edm): data std of the preconditioning, training
    # log sigma ~ N(p_mean, p_std^2); it samples over [sigma_min, sigma_max] (digits_edm.py:
    # the paper's 0.002 .. 80).
    f.sigma_data = 0.5
    f.p_mean = -1.2
    f.p_std = 1.2
    # flow (flow matching): training times uniform | logit_normal, t = sigmoid(mean + std n).
    f.time_sampling = "uniform"
    f.logit_mean = 0.0
    f.logit_std = 1.0
    # Loss weighting over noise levels: default (the objective's own) | min_snr (x0 weight
    # min(SNR, min_snr_gamma), Hang et al. 2023) | likelihood (g(t)^2 with importance-sampled
    # t, Song et al. 2021: vesde, vpsde, subvpsde).
    f.weighting = "default"
    f.min_snr_gamma = 5.0

    c.train = t = ml_collections.ConfigDict()
    t.steps = 2000
    t.batch_size = 128
    t.lr = 2e-3
    t.warmup_steps = 100
    t.weight_decay = 0.0
    t.grad_clip = 1.0
    t.ema_decay = 0.999
    # Train steps fused in one jitted lax.scan: a win on accelerators for small models; on CPU,
    # XLA runs convolutions inside a while loop many times slower, so keep 1 there.
    t.steps_per_call = 1
    t.checkpoint_every = 500
    t.keep_checkpoints = 3
    t.log_every = 50
    t.skip_nonfinite = False  # True: skip NaN/Inf steps and count them instead of stopping
    # skip_nonfinite: the run stops (after a checkpoint) once more than this fraction of its
    # steps were skipped.
    t.max_skipped_fraction = 0.1
    # Every sample_every steps (0: never), an EMA sample grid to WORKDIR/samples/step_N.png and
    # TensorBoard, and the quality figures (class accuracy, Frechet, ...) of sample_quality
    # samples on the digits and Fashion-MNIST (0: the grid only).
    t.sample_every = 0
    t.sample_quality = 500
    # The run ends with a grid of EMA samples, WORKDIR/samples_final.png (sample.per_class per
    # class); False: it ends at its last checkpoint (sample.py draws samples from it).
    t.final_samples = True
    # FID Inception weights (pytorch-fid's .pth or its .safetensors); empty: $JLDM_FID_WEIGHTS.
    # With either, the watch step adds sample/fid of the sample_quality samples against the
    # dataset's test split; with neither, no FID (nothing is downloaded).
    t.fid_weights = ""
    # FSDP-style: split params, EMA and optimizer state over the devices (largest divisible
    # axis of each big leaf) instead of a full copy on each; same updates, less memory/device.
    t.shard_params = False
    # Where the metrics go besides WORKDIR/metrics.jsonl (jldm.train.writers): tensorboard
    # (event files in WORKDIR/tb) | wandb (Weights & Biases: pip install 'jldm[wandb]'; project
    # $WANDB_PROJECT or jldm, WANDB_MODE=offline to keep it local) | none.
    t.writer = "tensorboard"

    c.sample = s = ml_collections.ConfigDict()
    # Every image objective takes every sampler (jldm.build.samplers): ddim (eta below; 0 is
    # Euler on the probability-flow ODE, also named euler) | ddpm (ancestral) | heun (Karras et
    # al.) | dpmpp2m (DPM-Solver++ 2M) | pc (predictor-corrector) | em (Euler-Maruyama) | ode
    # (RK4) | ode_adaptive (Dormand-Prince 5(4)) | als (annealed Langevin) | langevin.
    s.sampler = "ddim"
    # ddim, ddpm, heun, dpmpp2m: grid points; pc, em, ode: steps before the final denoising;
    # langevin: Langevin steps. (als counts noise levels: diffusion.num_scales.)
    s.steps = 50
    s.eta = 0.0  # ddim: 0 deterministic, 1 the ancestral step
    s.snr = 0.16  # pc: Langevin corrector signal-to-noise ratio
    s.corrector_steps = 1  # pc: corrector steps before each predictor step
    s.steps_per_sigma = 5  # als: Langevin steps per noise level
    s.als_step = 0.2  # als: step size / sigma^2 (Song & Ermon's 2e-5 at sigma = 0.01)
    s.ode_tol = 1e-4  # ode_adaptive: rtol = atol of its Dormand-Prince steps in log sigma
    s.step_size = 1e-4  # langevin: step size, at the process's smallest sigma
    s.init_std = 1.0  # langevin: chains start from N(0, init_std^2 I)
    s.guidance = 2.0  # classifier-free guidance scale (1: the conditional model alone)
    s.per_class = 10  # samples per class of the final grid
    solver_settings(s)
    return c
