"""Sample a trained run: jldm-sample --workdir runs/x --out runs/x/samples (python sample.py in a
clone).

Writes OUT.png (one row per class) and OUT.npz (images [N,H,W,C] in [0,1], labels [N]) and,
for the datasets with a quality classifier (the digits and Fashion-MNIST), prints the project's
quality figures. WORKDIR and OUT may be cloud paths (gs://...): they are kept as given and
written through etils.epath. The flags and their checks: jldm/scripts/sample_flags.py.
"""

import time

from jldm.cli import run_main
from jldm.scripts.sample_flags import (
    FLAGS,
    check_count,
    check_flags,
    check_input_flags,
    class_labels,
    known_pixels,
    read_image,
    sampler_steps_guidance,
    writable_prefix,
)

__all__ = ["FLAGS", "main", "run"]


def _sample_shards(workdir: str) -> None:
    """sample.py --batch_size B --num N: N samples as uint8 shards in the folder --out."""
    import jldm
    from jldm.build import samplers
    from jldm.build.vae import is_vae
    from jldm.data.paths import check_links, join, resolve
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
    check_links(out, "--out")
    check_writable_folder(out, "--out")
    s, d = run.config.sample, run.config.data
    classes = None
    if FLAGS.classes:
        classes = sorted(set(int(c) for c in class_labels(d.num_classes, FLAGS.classes, 1)))
    sampler, steps, guidance = sampler_steps_guidance(run)
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
    out = writable_prefix(FLAGS.out[:-4] if FLAGS.out.endswith(".png") else FLAGS.out)
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


def _sample_vae(run, out: str, per_class: int) -> None:
    """sample.py on a VAE run: prior samples, reconstructions and interpolations."""
    from jldm.sampling.vae import sample_vae_run

    refused = ("sampler", "steps", "guidance", "eta", "prompt", "source", "mask", "low_res")
    sample_vae_run(
        run,
        out,
        labels=class_labels(run.config.data.num_classes, FLAGS.classes, per_class),
        per_class=per_class,
        seed=FLAGS.seed,
        metrics=FLAGS.metrics,
        unused={flag: FLAGS[flag].value for flag in refused},
    )


def _print_quality(run, images, labels, per_class: int) -> None:
    """The quality figures of class-labelled samples and, with every class sampled, those of as
    many real training images scored the same way."""
    from jldm.data.datasets import dataset_of
    from jldm.eval import sample_quality

    q = sample_quality(images, labels, dataset_of(run.config.data))
    print("quality: " + ", ".join(f"{k} {v:.4f}" for k, v in q.items() if v is not None))
    if not FLAGS.classes:
        from jldm.compare import real_row

        real = real_row(run.config, per_class)
        figures = ", ".join(f"{k} {real[k]:.4f}" for k in q if real.get(k) is not None)
        print(f"real ({len(labels)} training images): {figures}")


def _sample_diffusion(run, out: str, per_class: int) -> None:
    """sample.py on a diffusion run: a grid of samples by class, prompt, --source or --low_res."""
    import numpy as np

    import jldm
    from jldm.build import samplers
    from jldm.data.datasets import has_quality
    from jldm.eval import save_grid
    from jldm.sampling.progress import running
    from jldm.sampling.shards import save_npz
    from jldm.temporaries import together

    d = run.config.data
    prompts = None
    if FLAGS.prompt:
        prompts = [p for p in FLAGS.prompt for _ in range(per_class)]
        labels = np.full((len(prompts),), -1, np.int32)  # unknown class
    else:
        labels = class_labels(d.num_classes, FLAGS.classes, per_class)
    known = known_pixels(run, len(labels))
    low_res = None
    if FLAGS.low_res is not None:
        img = read_image(FLAGS.low_res, "--low_res", d.channels)
        low_res = np.broadcast_to(img * 2.0 - 1.0, (len(labels), *img.shape))
    sampler, steps, guidance = sampler_steps_guidance(run)
    nfe = samplers.nfe(run.config, sampler, steps, guidance)

    t0 = time.perf_counter()
    with running(f"sampling {len(labels)} images, {sampler} {steps} steps ({nfe} NFE)"):
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
    with together():  # a grid and its .npz are replaced both or neither
        save_grid(images, out + ".png", ncols=per_class)
        save_npz(out + ".npz", images=images, labels=labels, prompts=np.asarray(prompts or []))
    print(
        f"step {run.step}: {len(labels)} samples, {sampler} ({nfe} NFE), "
        f"guidance {guidance}, {seconds:.1f} s incl. compile"
    )
    if FLAGS.metrics and has_quality(d.name) and not prompts:
        _print_quality(run, images, labels, per_class)
    print(f"samples: {out}.png {out}.npz")


def main(owns_process: bool = False) -> None:
    """Sample FLAGS.workdir or FLAGS.pretrained; owns_process: the script runs, not a test."""
    import jldm
    from jldm.build.vae import is_vae
    from jldm.data.paths import check_links, join, resolve
    from jldm.errors import UserError

    check_flags()
    check_input_flags()
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
    check_links(FLAGS.workdir, "--workdir")
    workdir = resolve(FLAGS.workdir)  # a cloud path (gs://...) is kept as given
    if FLAGS.batch_size is not None:
        return _sample_shards(workdir)
    run = jldm.load(workdir, FLAGS.step)
    out = writable_prefix(FLAGS.out or join(workdir, "samples"))
    per_class = run.config.sample.per_class if FLAGS.num is None else FLAGS.num
    check_count(run, per_class)
    if is_vae(run.config):
        return _sample_vae(run, out, per_class)
    _sample_diffusion(run, out, per_class)


def run() -> None:
    """The jldm-sample command (and python sample.py): parse sys.argv, run, exit with its code."""
    run_main(lambda: main(owns_process=True), flag_values=FLAGS)


if __name__ == "__main__":
    run()
