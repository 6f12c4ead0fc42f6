"""FID: Frechet distance between InceptionV3 pool features of samples and of a reference set.

    python -m jldm.eval.fid SAMPLES REF --weights pt_inception-2015-12-05-6726825d.pth
    python -m jldm.eval.fid SAMPLES --ref digits:test --weights ...

SAMPLES and REF are .npz files or folders of .npz shards (sample.py --batch_size writes them).
Each .npz holds images (key `images`, or its only array: [N,H,W,C] floats in [0,1] or uint8,
C = 1 or 3), or statistics (`mu` [2048] and `sigma` [2048,2048], as pytorch-fid writes them).
A folder is read one shard at a time; SAMPLES and REF may be cloud paths (gs://...). --ref
DATASET:SPLIT takes the reference from a dataset split (digits, fashion_mnist or a prepared
TFDS dataset), its statistics cached in jldm's cache folder per weights file. --save_stats
writes the reference's statistics for later runs. The weights are the PyTorch FID Inception
checkpoint or its conversion (jldm.convert.inception); JLDM_FID_WEIGHTS sets a default.
"""

import math
import os
import sys
import time

from absl import flags

from jldm.cli import run_main
from jldm.data import paths
from jldm.data.datasets import DEFAULT_FASHION_DIR, Dataset
from jldm.errors import UserError
from jldm.eval import fid as fid_lib

# Its own flags, not absl's global ones: importing jldm defines none (jldm.cli.run_cli).
FLAGS = flags.FlagValues()

flags.DEFINE_string(
    "weights",
    None,
    "FID Inception weights (.pth from pytorch-fid, or .safetensors); default $JLDM_FID_WEIGHTS.",
    flag_values=FLAGS,
)
flags.DEFINE_integer("batch_size", 50, "Images per Inception forward pass.", flag_values=FLAGS)
flags.DEFINE_string(
    "save_stats", None, "Write the reference's mu/sigma to this .npz.", flag_values=FLAGS
)
flags.DEFINE_string(
    "ref",
    None,
    "Reference images from a dataset split, DATASET:SPLIT (e.g. digits:test).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "data_dir", "~/tensorflow_datasets", "--ref: where TFDS datasets are built.", flag_values=FLAGS
)
flags.DEFINE_string(
    "fashion_dir",
    DEFAULT_FASHION_DIR,
    "--ref fashion_mnist: its IDX files.",
    flag_values=FLAGS,
)


def _dataset_ref(ref: str) -> tuple[Dataset, str]:
    """--ref DATASET:SPLIT as (the Dataset in --data_dir, SPLIT); fid() opens it before the
    Inception (a built-in one prepared on first use)."""
    name, split = fid_lib.parse_ref(ref)
    return Dataset(name, FLAGS.data_dir, FLAGS.fashion_dir), split


def _check_save_stats(given: str) -> None:
    """--save_stats names a new file (with the .npz np.savez appends) in a writable folder."""
    from jldm.runs.workdir import check_output_file

    path = fid_lib.stats_file(given)
    named = f"--save_stats {given}" + (f" (written as {path})" if path != given else "")
    if paths.exists(path):
        raise UserError(f"{named} exists: pick a new path (it is never overwritten)")
    check_output_file(path, "--save_stats")


def main(argv: list[str]) -> None:
    """FID of argv's SAMPLES against REF (or --ref), printed as one line."""
    if len(argv) != (1 if FLAGS.ref else 2):
        raise UserError(
            "usage: python -m jldm.eval.fid SAMPLES REF [--weights FILE], or SAMPLES --ref "
            "DATASET:SPLIT (SAMPLES, REF: .npz files or folders of .npz shards)"
        )
    weights = FLAGS.weights or os.environ.get(fid_lib.WEIGHTS_ENV)
    if not weights:
        raise UserError(
            "FID needs the Inception weights: pass --weights pt_inception-2015-12-05-6726825d.pth "
            "(pytorch-fid's checkpoint) or set JLDM_FID_WEIGHTS"
        )
    if not os.path.isfile(weights):
        raise UserError(f"--weights {weights} not found: pass the FID Inception weights file")
    if FLAGS.batch_size < 1:
        raise UserError(f"--batch_size={FLAGS.batch_size} must be >= 1")
    if FLAGS.save_stats:
        _check_save_stats(FLAGS.save_stats)
    t0 = time.perf_counter()
    ref = argv[1] if not FLAGS.ref else _dataset_ref(FLAGS.ref)
    # Both sets are checked through before the first Inception pass (fid_inputs.check_set).
    value, n1, n2 = fid_lib.fid(argv[0], ref, weights, FLAGS.batch_size, FLAGS.save_stats)
    if not math.isfinite(value):
        raise UserError(f"the FID came out {value}, which is not a result: nothing is printed")
    count = lambda n: f"{n} images" if n else "stored stats"
    print(
        f"FID {value:.4f} ({count(n1)} vs {count(n2)}, {time.perf_counter() - t0:.1f} s)",
        file=sys.stdout,
    )


def run() -> None:
    """The jldm-fid command (and python -m jldm.eval.fid)."""
    run_main(main, positional=True, flag_values=FLAGS)


if __name__ == "__main__":
    run()
