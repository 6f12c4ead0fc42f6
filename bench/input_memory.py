"""Resident memory and speed of the training input: a split streamed from disk (grain threads,
rows by (seed, step)) against the split loaded whole into memory.

    python bench/input_memory.py                  # 200,000 images of 64x64x3: 2.46 GB on disk
    python bench/input_memory.py --num 50000 --folder /scratch/jldm-input-bench

Builds once a synthetic TFDS dataset `jldm_bench_images` (array_record, uint8 64x64x3 images
of uniform noise stored as raw bytes, so nothing compresses them; 10 classes) under --folder
(default $TMPDIR/jldm-input-bench), after checking the disk has room for it (--num is lowered
to what fits, and the line says so). TFDS spills its write buffer past 1 GB through
TensorFlow, which jldm does without: the build keeps it in memory (the dataset's size, once,
in the building process only). Then each loader runs in a fresh subprocess and reads
--batches batches of --batch_size images:

  stream      open_split + Pixels + stream: pixel-space training's path, nothing held whole
  memory_u8   load_split: the split whole in memory as uint8, then the same batches from it
              (uint8 rows, not resized or normalised: its images/s is indexing alone)
  memory_f32  load_split + preprocess: the split whole as float32 in [-1, 1], as
              inputs.load_training_images gives it to the VAE and stage 1 (5x the uint8 bytes:
              12.3 GB for 200,000 images; measure it on a slice, --split=train[:50000], where
              the machine is shared)

One JSON line per loader: peak resident memory (VmHWM of /proc/self/status, the whole process:
Python, jax, TFDS), the seconds to the first batch, and images/s over the batches after it.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import timing

timing.add_root_to_path()

from absl import app, flags  # noqa: E402

flags.DEFINE_integer("num", 200_000, "Images in the synthetic train split.")
flags.DEFINE_string("folder", "", "Where the dataset is built (default $TMPDIR/jldm-input-bench).")
flags.DEFINE_string("split", "train", "The split the loaders read, e.g. train[:50000].")
flags.DEFINE_integer("batches", 200, "Batches each loader reads.")
flags.DEFINE_integer("batch_size", 128, "Images per batch.")
flags.DEFINE_integer("threads", 4, "stream: worker threads.")
flags.DEFINE_list("loaders", ["stream", "memory_u8", "memory_f32"], "Loaders to measure.")
flags.DEFINE_string("child", "", "Internal: run this loader in this process.")
flags.DEFINE_string("out", "", "Also append the JSON lines to this file.")
FLAGS = flags.FLAGS

NAME, SIZE = "jldm_bench_images", 64
IMAGE_BYTES = SIZE * SIZE * 3


def _builder(data_dir: str, num: int):
    import numpy as np
    import tensorflow_datasets as tfds

    class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = NAME
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Tensor(
                shape=(SIZE, SIZE, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
            )
            label = tfds.features.ClassLabel(num_classes=10)
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({"image": image, "label": label}),
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for start in range(0, num, 1000):  # uniform noise: no compression shrinks it
                rng = np.random.default_rng(start)
                images = rng.integers(0, 256, (min(1000, num - start), SIZE, SIZE, 3), np.uint8)
                for i, image in enumerate(images):
                    yield start + i, {"image": image, "label": (start + i) % 10}

    return Builder(data_dir=data_dir, file_format="array_record")


def _vm_hwm_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(loader: str, data_dir: str) -> None:
    import numpy as np

    from jldm.data import Dataset, load_split, open_split, preprocess
    from jldm.data.stream import ArraySource, Pixels, stream

    t0 = time.perf_counter()
    if loader == "stream":
        source = Pixels(open_split(Dataset(NAME, data_dir), FLAGS.split), SIZE)
    else:
        split = load_split(Dataset(NAME, data_dir), FLAGS.split)
        images = split.images if loader == "memory_u8" else preprocess(split.images, SIZE)
        source = ArraySource(images, split.labels)
    batches = stream(
        source,
        seed=0,
        batch_size=FLAGS.batch_size,
        steps_per_call=1,
        start=0,
        stop=FLAGS.batches,
        threads=FLAGS.threads,
    )
    first, checksum = None, 0.0
    for _, x, _ in batches:
        checksum += float(np.asarray(x[0, 0], np.float64).sum())  # touch every batch
        if first is None:
            first = time.perf_counter()
    done = time.perf_counter()
    print(
        json.dumps(
            {
                "case": "input_memory",
                "loader": loader,
                "split": FLAGS.split,
                "images": len(source),
                "batch_size": FLAGS.batch_size,
                "batches": FLAGS.batches,
                "threads": FLAGS.threads if loader == "stream" else None,
                "peak_rss_mb": round(_vm_hwm_mb(), 1),
                "first_batch_s": round(first - t0, 2),
                "images_per_s": round(FLAGS.batch_size * (FLAGS.batches - 1) / (done - first), 1),
            }
        ),
        flush=True,
    )


def main(argv) -> None:
    del argv
    folder = FLAGS.folder or os.path.join(tempfile.gettempdir(), "jldm-input-bench")
    data_dir = os.path.join(folder, f"n{FLAGS.num}")
    if FLAGS.child:
        return _child(FLAGS.child, data_dir)
    num = FLAGS.num
    if not os.path.isdir(os.path.join(data_dir, NAME)):
        os.makedirs(folder, exist_ok=True)
        free = shutil.disk_usage(folder).free
        fits = int(0.8 * free / (IMAGE_BYTES + 64))
        if fits < num:
            print(f"only {free / 1e9:.1f} GB free in {folder}: {fits} images instead of {num}")
            num = fits
            data_dir = os.path.join(folder, f"n{num}")
        from tensorflow_datasets.core import shuffle

        shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 2 * num * IMAGE_BYTES)
        t0 = time.perf_counter()
        _builder(data_dir, num).download_and_prepare()
        size = sum(
            os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(data_dir) for n in ns
        )
        print(
            f"built {num} images, {size / 1e9:.2f} GB in {data_dir} in "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    for loader in FLAGS.loaders:
        args = [a for a in sys.argv[1:] if not a.startswith(("--child", "--num"))]
        cmd = [sys.executable, __file__, f"--child={loader}", f"--num={num}", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not lines:
            print(f"{loader} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
            continue
        timing.emit(json.loads(lines[-1]), FLAGS.out)


if __name__ == "__main__":
    app.run(main)
