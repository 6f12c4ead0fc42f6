"""Sample a trained run: jldm-sample --workdir runs/x --out runs/x/samples (python sample.py in a
clone).

Writes OUT.png (one row per class) and OUT.npz (images [N,H,W,C] in [0,1], labels [N]) and,
for the digits and Fashion-MNIST, prints the project's quality figures. WORKDIR and OUT may
be cloud paths (gs://...): they are kept as given and written through etils.epath.
"""

import time

from absl import flags

from jldm.cli import run_main

# Its own flags, not absl's global ones, so that tests can run main in-process (jldm.cli.run_cli).
FLAGS = flags.FlagValues()

flags.DEFINE_string("workdir", None, "Run folder written by train.py.", flag_values=FLAGS)
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).", flag_values=FLAGS)
flags.DEFINE_integer(
    "num",
    None,
    "Samples per class (default: config.sample.per_class); with --batch_size, the total number "
    "of samples (e.g. 50000 for FID).",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "batch_size",
    None,
    "Sampling at scale: --num samples in batches of this size, each split over all devices, "
    "written to the folder --out as uint8 .npz shards (classes cycled); a rerun resumes.",
    flag_values=FLAGS,
)
flags.DEFINE_list(
    "classes", None, "Class labels to sample, e.g. 0,3,7 (default: all).", flag_values=FLAGS
)
flags.DEFINE_string(
    "sampler",
    None,
    "Sampler (default: config.sample.sampler): ddim|euler|ddpm|heun|dpmpp2m|pc|em|ode|als|"
    "langevin, every one on every image objective; ddim|euler|ddpm|heun|pc|em|ode with "
    "--pretrained.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "steps",
    None,
    "Sampler steps: grid points (ddim, ddpm, heun, dpmpp2m), steps before the final denoising "
    "(pc, em, ode), noise levels (als) (default: the config's).",
    flag_values=FLAGS,
)
flags.DEFINE_float(
    "guidance", None, "Classifier-free guidance scale; 1 = conditional only.", flag_values=FLAGS
)
flags.DEFINE_float("eta", None, "DDIM eta (0 = deterministic).", flag_values=FLAGS)
flags.DEFINE_integer("seed", 0, "Sampling seed.", flag_values=FLAGS)
flags.DEFINE_string(
    "out",
    None,
    "Output prefix: writes OUT.png and OUT.npz (default WORKDIR/samples).",
    flag_values=FLAGS,
)
flags.DEFINE_multi_string(
    "prompt",
    None,
    "Text prompt of a text-conditional run (repeat the flag for several).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "source",
    None,
    "Inpainting: the image to complete (.png, or .npy [H,W,C] in [0,1]).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "mask",
    None,
    "Inpainting: which pixels of --source to keep (.png or .npy [H,W], nonzero).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "low_res",
    None,
    "Super-resolution runs: the low-resolution image to sharpen (.png, or .npy [h,w,C] in [0,1]).",
    flag_values=FLAGS,
)
flags.DEFINE_bool(
    "metrics", True, "Print class accuracy and Frechet distance where defined.", flag_values=FLAGS
)
flags.DEFINE_string(
    "pretrained",
    None,
    "Text-to-image from a diffusers Stable Diffusion folder (unet/ vae/ text_encoder/ "
    "tokenizer/ scheduler/) instead of a --workdir; prompts from --prompt.",
    flag_values=FLAGS,
)
flags.DEFINE_multi_string(
    "negative_prompt",
    None,
    "--pretrained: negative prompt, one for all or one per --prompt.",
    flag_values=FLAGS,
)
flags.DEFINE_integer(
    "height", None, "--pretrained: image height (default: the model's).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "width", None, "--pretrained: image width (default: the model's).", flag_values=FLAGS
)
flags.DEFINE_string(
    "pretrained_cache",
    None,
    "--pretrained: where the converted Orbax checkpoint is kept (default: a folder per model "
    "under $JLDM_CACHE_DIR, else $XDG_CACHE_HOME/jldm, else ~/.cache/jldm; 'none' to convert "
    "every time).",
    flag_values=FLAGS,
)
flags.DEFINE_enum(
    "precision",
    "auto",
    ["auto", "float32", "bfloat16"],
    "--pretrained compute dtype; auto = bfloat16 on GPU/TPU, float32 on CPU.",
    flag_values=FLAGS,
)

_QUALITY_DATASETS = ("digits", "fashion_mnist")


def _labels(num_classes: int, classes: list[str] | None, per_class: int):
    import numpy as np

    from jldm.errors import UserError

    try:
        chosen = list(range(num_classes)) if not classes else [int(c) for c in classes]
    except ValueError:
        raise UserError(f"--classes={','.join(classes)} must be integers") from None
    bad = [c for c in chosen if not 0 <= c < num_classes]
    if bad:
        raise UserError(f"--classes has {bad}: classes are 0..{num_classes - 1}")
    if per_class < 1:
        raise UserError(f"--num={per_class} must be >= 1")
    return np.repeat(np.asarray(chosen, np.int32), per_class)


def _writable_prefix(out: str) -> str:
    """The --out prefix made absolute (a cloud one kept as given), its folder checked and made."""
    from jldm.data.paths import dirname, makedirs, resolve
    from jldm.runs.workdir import check_writable_folder

    out = resolve(out)
    folder = dirname(out)
    check_writable_folder(folder, "the --out folder")
    makedirs(folder)
    return out


def _read_image(path: str, flag: str, channels: int | None):
    """A .png or .npy file -> float32 [H, W, C] in [0, 1] ([H, W] for channels None).

    path may be local or a cloud object (gs://...).
    """
    import io

    import numpy as np

    from jldm.data.paths import is_local, read_bytes
    from jldm.errors import UserError

    try:
        source = path if is_local(path) else io.BytesIO(read_bytes(path))
        if path.endswith(".npy"):
            a = np.load(source).astype(np.float32)
        else:
            from PIL import Image

            a = np.asarray(Image.open(source).convert("L" if channels in (1, None) else "RGB"))
            a = a.astype(np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {flag} {path} ({e}): pass a .png or .npy file") from None
    if channels is not None and a.ndim == 2:
        a = a[..., None]
    return a


def _known(run, n: int):
    """(images [n,H,W,C] in [-1, 1], mask [n,H,W,1]) from --source and --mask, or None."""
    import numpy as np

    from jldm.errors import UserError

    if FLAGS.source is None and FLAGS.mask is None:
        return None
    if FLAGS.source is None or FLAGS.mask is None:
        raise UserError("inpainting needs both --source IMAGE and --mask MASK")
    d = run.config.data
    src = _read_image(FLAGS.source, "--source", d.channels)
    mask = _read_image(FLAGS.mask, "--mask", None)
    want = (d.resolution, d.resolution)
    if src.shape != want + (d.channels,):
        raise UserError(
            f"--source is {src.shape}, the run samples {want + (d.channels,)}: resize it"
        )
    if mask.shape != want:
        raise UserError(f"--mask is {mask.shape}, expected {want} (nonzero = keep): resize it")
    keep = (mask > 0).astype(np.float32)[..., None]
    images = np.broadcast_to(src * 2.0 - 1.0, (n, *src.shape))
    return images, np.broadcast_to(keep, (n, *keep.shape))


def _check_flags() -> None:
    """Values no run or model can use: 0 is a value here, not "unset"."""
    import math

    from jldm.errors import UserError

    for name in ("num", "steps", "height", "width", "batch_size"):
        value = FLAGS[name].value
        if value is not None and value < 1:
            raise UserError(f"--{name}={value} must be >= 1 (leave it out for the default)")
    for name in ("guidance", "eta"):
        value = FLAGS[name].value
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name}={value} must be a finite number")
    if FLAGS.eta is not None and not 0 <= FLAGS.eta <= 1:
        raise UserError(f"--eta={FLAGS.eta} must be in [0, 1] (0: deterministic DDIM)")


def _sampler_steps_guidance(run) -> tuple[str, int, float]:
    """The flags' sampler, steps and guidance, else the run's config (steps: the sampler's)."""
    from jldm.build import samplers

    s = run.config.sample
    sampler = FLAGS.sampler or s.sampler
    steps = samplers.get(sampler).default_steps(run.config) if FLAGS.steps is None else FLAGS.steps
    return sampler, steps, s.guidance if FLAGS.guidance is None else FLAGS.guidance


def _sample_shards(workdir: str) -> None:
    """sample.py --batch_size B --num N: N samples as uint8 shards in the folder --out."""
    import jldm
    from jldm.build import samplers
    from jldm.build.vae import is_vae
    from jldm.data.paths import join, resolve
    from jldm.errors import UserError
    from jldm.runs.workdir import check_writable_folder
    from jldm.sampling.shards import sample_shards

    for flag in ("prompt", "source", "mask", "low_res"):
        if FLAGS[flag].value:
            raise UserError(f"--batch_size samples class-conditional shards: drop --{flag}")
    if FLAGS.num is None:
        raise UserError("--batch_size needs --num, the total number of samples (e.g. 50000)")
    run = jldm.load(workdir, FLAGS.step)
    if is_vae(run.config):
        raise UserError("--batch_size is for diffusion runs: drop it for a VAE run")
    out = resolve(FLAGS.out or join(workdir, "shards"))
    check_writable_folder(out, "--out")
    s, d = run.config.sample, run.config.data
    classes = None
    if FLAGS.classes:
        classes = sorted(set(int(c) for c in _labels(d.num_classes, FLAGS.classes, 1)))
    sampler, steps, guidance = _sampler_steps_guidance(run)
    done = sample_shards(
        run,
        out,
        num=FLAGS.num,
        batch_size=FLAGS.batch_size,
        classes=classes,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        eta=s.eta if FLAGS.eta is None else FLAGS.eta,
        seed=FLAGS.seed,
    )
    print(
        f"step {run.step}: {done.images} samples in {out} ({done.written} shards written in "
        f"{done.seconds:.1f} s, {done.skipped} already there), {sampler} "
        f"({samplers.nfe(run.config, sampler, steps, guidance)} NFE), guidance {guidance}"
    )


def _sample_pretrained() -> None:
    """sample.py --pretrained DIR --prompt TEXT ...: text-to-image with imported SD weights."""
    from jldm.errors import UserError
    from jldm.sampling.pretrained import sample_pretrained

    if FLAGS.workdir is not None:
        raise UserError("pass either --workdir or --pretrained, not both")
    if not FLAGS.prompt:
        raise UserError("--pretrained needs --prompt TEXT (repeat it for several prompts)")
    if FLAGS.out is None:
        raise UserError("--pretrained needs --out OUT.png")
    out = _writable_prefix(FLAGS.out[:-4] if FLAGS.out.endswith(".png") else FLAGS.out)
    negative = FLAGS.negative_prompt or [""]
    cache = FLAGS.pretrained_cache
    sample_pretrained(
        FLAGS.pretrained,
        FLAGS.prompt,
        out,
        negative_prompts=negative[0] if len(negative) == 1 else negative,
        steps=50 if FLAGS.steps is None else FLAGS.steps,
        guidance=7.5 if FLAGS.guidance is None else FLAGS.guidance,
        sampler=FLAGS.sampler or "ddim",
        seed=FLAGS.seed,
        height=FLAGS.height,
        width=FLAGS.width,
        num_per_prompt=1 if FLAGS.num is None else FLAGS.num,
        eta=0.0 if FLAGS.eta is None else FLAGS.eta,
        cache=True if cache is None else (False if cache == "none" else cache),
        precision=FLAGS.precision,
    )


def main(owns_process: bool = False) -> None:
    """Sample FLAGS.workdir or FLAGS.pretrained; owns_process: the script runs, not a test."""
    import numpy as np

    import jldm
    from jldm.build import samplers
    from jldm.build.vae import is_vae
    from jldm.data.paths import join, resolve
    from jldm.errors import UserError
    from jldm.eval import save_grid
    from jldm.sampling.shards import save_npz

    _check_flags()
    if FLAGS.pretrained is not None:
        return _sample_pretrained()
    if owns_process:
        from jldm.runs.orbax_echoes import quiet_abandoned_reads_for_process

        # Process-wide hooks: only a process that ends with this command may keep them.
        quiet_abandoned_reads_for_process()
    if FLAGS.workdir is None:
        raise UserError(
            "sample.py needs --workdir DIR (a folder written by train.py) or --pretrained DIR"
        )
    workdir = resolve(FLAGS.workdir)  # a cloud path (gs://...) is kept as given
    if FLAGS.batch_size is not None:
        return _sample_shards(workdir)
    run = jldm.load(workdir, FLAGS.step)
    out = _writable_prefix(FLAGS.out or join(workdir, "samples"))
    s, d = run.config.sample, run.config.data
    per_class = s.per_class if FLAGS.num is None else FLAGS.num
    if is_vae(run.config):
        from jldm.sampling.vae import sample_vae_run

        refused = ("sampler", "steps", "guidance", "eta", "prompt", "source", "mask", "low_res")
        sample_vae_run(
            run,
            out,
            labels=_labels(d.num_classes, FLAGS.classes, per_class),
            per_class=per_class,
            seed=FLAGS.seed,
            metrics=FLAGS.metrics,
            unused={flag: FLAGS[flag].value for flag in refused},
        )
        return
    prompts = None
    if FLAGS.prompt:
        prompts = [p for p in FLAGS.prompt for _ in range(per_class)]
        labels = np.full((len(prompts),), -1, np.int32)  # unknown class
    else:
        labels = _labels(d.num_classes, FLAGS.classes, per_class)
    known = _known(run, len(labels))
    low_res = None
    if FLAGS.low_res is not None:
        img = _read_image(FLAGS.low_res, "--low_res", d.channels)
        low_res = np.broadcast_to(img * 2.0 - 1.0, (len(labels), *img.shape))
    sampler, steps, guidance = _sampler_steps_guidance(run)

    t0 = time.perf_counter()
    images = jldm.generate(
        run,
        labels=None if prompts else labels,
        prompts=prompts,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        eta=FLAGS.eta,
        seed=FLAGS.seed,
        known=known,
        low_res=low_res,
    )
    seconds = time.perf_counter() - t0
    save_grid(images, out + ".png", ncols=per_class)
    save_npz(out + ".npz", images=images, labels=labels, prompts=np.asarray(prompts or []))
    nfe = samplers.nfe(run.config, sampler, steps, guidance)
    print(
        f"step {run.step}: {len(labels)} samples, {sampler} ({nfe} NFE), "
        f"guidance {guidance}, {seconds:.1f} s incl. compile"
    )
    if FLAGS.metrics and d.name in _QUALITY_DATASETS and not prompts:
        from jldm.eval import sample_quality

        q = sample_quality(images, labels, d.name, d.data_dir, d.fashion_dir)
        print("quality: " + ", ".join(f"{k} {v:.4f}" for k, v in q.items() if v is not None))
        if not FLAGS.classes:  # as many real images of every class, scored the same way
            from jldm.compare import real_row

            real = real_row(run.config, per_class)
            figures = ", ".join(f"{k} {real[k]:.4f}" for k in q if real.get(k) is not None)
            print(f"real ({len(labels)} training images): {figures}")
    print(f"samples: {out}.png {out}.npz")


def run() -> None:
    """The jldm-sample command (and python sample.py): parse sys.argv, run, exit with its code."""
    run_main(lambda: main(owns_process=True), flag_values=FLAGS)


if __name__ == "__main__":
    run()
