"""sample.py's flags, their checks, and the inputs read from them (class labels, the images of
--source, --mask and --low_res, the --out prefix, the sampler settings).

Its own absl FlagValues, not absl's global ones, so that tests can run main in-process
(jldm.cli.run_cli) and importing jldm defines no flag.
"""

from absl import flags

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
    "Inpainting: the image to complete (.png, or .npy [H,W,C]: uint8, or floats in [0,1]).",
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
    "Super-resolution runs: the low-resolution image to sharpen (.png, or .npy [h,w,C]: uint8, "
    "or floats in [0,1]).",
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


def class_labels(num_classes: int, classes: list[str] | None, per_class: int):
    """--classes (default: all) each repeated per_class times: int32 [len(classes) * per_class]."""
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


def writable_prefix(out: str) -> str:
    """The --out prefix made absolute (a cloud one kept as given), its folder checked and made."""
    from jldm.data.paths import check_links, dirname, makedirs, resolve
    from jldm.runs.workdir import check_writable_folder

    check_links(out, "--out")
    out = resolve(out)
    folder = dirname(out)
    check_writable_folder(folder, "the --out folder")
    makedirs(folder)
    return out


def read_image(path: str, flag: str, channels: int | None):
    """A .png or .npy file -> float32 [H, W, C] in [0, 1], or a mask [H, W] (channels None).

    An image .npy holds uint8 (scaled by 1/255) or floats in [0, 1]; a mask's any numbers
    (nonzero = keep). NaN and other dtypes are refused. path may be local or a cloud object.
    """
    import io

    import numpy as np

    from jldm.data.paths import is_local, read_bytes
    from jldm.errors import UserError

    try:
        source = path if is_local(path) else io.BytesIO(read_bytes(path))
        if path.endswith(".npy"):
            a = _unit_array(np.load(source), flag, path, mask=channels is None)
        else:
            from PIL import Image

            a = np.asarray(Image.open(source).convert("L" if channels in (1, None) else "RGB"))
            a = a.astype(np.float32) / 255.0
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {flag} {path} ({e}): pass a .png or .npy file") from None
    if channels is not None and a.ndim == 2:
        a = a[..., None]
    return a


def _unit_array(a, flag: str, path: str, mask: bool):
    """A loaded .npy as float32: uint8 images / 255, float images in [0, 1], masks as read."""
    import numpy as np

    from jldm.errors import UserError

    kind = a.dtype.kind
    if kind not in "buif":
        raise UserError(f"{flag} {path} holds {a.dtype} values: pass numbers")
    if kind == "f" and not np.isfinite(a).all():
        raise UserError(f"{flag} {path} holds NaN or inf values: pass finite numbers")
    if mask:
        return a.astype(np.float32)
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if kind != "f":
        raise UserError(
            f"{flag} {path} holds {a.dtype} values: pass uint8 (0..255) or floats in [0, 1]"
        )
    if a.size and (a.min() < 0 or a.max() > 1):
        raise UserError(
            f"{flag} {path} holds values in [{a.min():g}, {a.max():g}]: pass floats in [0, 1] "
            "(or uint8 0..255)"
        )
    return a.astype(np.float32)


def known_pixels(run, n: int):
    """(images [n,H,W,C] in [-1, 1], mask [n,H,W,1]) from --source and --mask, or None."""
    import numpy as np

    from jldm.errors import UserError

    if FLAGS.source is None and FLAGS.mask is None:
        return None
    if FLAGS.source is None or FLAGS.mask is None:
        raise UserError("inpainting needs both --source IMAGE and --mask MASK")
    d = run.config.data
    src = read_image(FLAGS.source, "--source", d.channels)
    mask = read_image(FLAGS.mask, "--mask", None)
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


def check_flags() -> None:
    """Values no run or model can use: 0 is a value here, not "unset"."""
    import math

    from jldm.build import ranges
    from jldm.errors import UserError

    for name in ("num", "steps", "height", "width", "batch_size"):
        value = FLAGS[name].value
        if value is not None and value < 1:
            raise UserError(f"--{name}={value} must be >= 1 (leave it out for the default)")
        if value is not None and value > ranges.INT32_MAX:
            raise UserError(f"--{name}={value} must be at most {ranges.INT32_MAX}")
    for name in ("guidance", "eta"):
        value = FLAGS[name].value
        if value is not None and not math.isfinite(value):
            raise UserError(f"--{name}={value} must be a finite number")
    if FLAGS.eta is not None and not 0 <= FLAGS.eta <= 1:
        raise UserError(f"--eta={FLAGS.eta} must be in [0, 1] (0: deterministic DDIM)")
    if FLAGS.guidance is not None:
        ranges.check_guidance(FLAGS.guidance, "--guidance")
    ranges.check_seed(FLAGS.seed, "--seed")


# Flags that only one of sample.py's two inputs reads.
PRETRAINED_ONLY = ("negative_prompt", "height", "width", "pretrained_cache", "precision")
WORKDIR_ONLY = ("step", "batch_size", "classes", "source", "mask", "low_res")


def check_input_flags() -> None:
    """Refuse a flag the chosen input (--pretrained or --workdir) would ignore."""
    from jldm.errors import UserError

    pretrained = FLAGS.pretrained is not None
    for name in WORKDIR_ONLY if pretrained else PRETRAINED_ONLY:
        if FLAGS[name].present:
            if pretrained:
                raise UserError(f"--{name} is for runs of --workdir: drop it with --pretrained")
            raise UserError(f"--{name} is for --pretrained folders: drop it with --workdir")


def sampler_steps_guidance(run) -> tuple[str, int, float]:
    """The flags' sampler, steps and guidance, else the run's config (steps: the sampler's)."""
    from jldm.build import samplers

    s = run.config.sample
    sampler = FLAGS.sampler or s.sampler
    steps = samplers.get(sampler).default_steps(run.config) if FLAGS.steps is None else FLAGS.steps
    return sampler, steps, s.guidance if FLAGS.guidance is None else FLAGS.guidance


def check_count(run, per_class: int) -> None:
    """The images of one call (per_class for each class or prompt) fit in this machine's
    memory, checked before their labels are made (the network's share: make_generator's)."""
    from jldm.build.memory import check_images_fit

    d = run.config.data
    n = per_class * len(FLAGS.prompt or FLAGS.classes or range(d.num_classes))
    fix = "lower --num, or pass --batch_size B to write them in batches"
    check_images_fit(n, (d.resolution, d.resolution, d.channels), fix)
