"""A table of user mistakes on train.py and sample.py: each is one `error:` line and exit 2.

Every case runs against its own copy of one tiny trained run, and the copy must come back
byte-for-byte unchanged: a refused command never overwrites what is on disk.
"""

import concurrent.futures
import hashlib
import os
import shutil

import pytest

from jldm.train.loop import run
from tests.clitools import assert_user_error, cli, train_args
from tests.tiny import tiny_config

W, D, T, R = "{workdir}", "{data_dir}", "{tmp}", "{root}"  # filled in per case
# Config files with a mistake in their own code, written into R by the fixture.
BROKEN_CONFIGS = {
    "syntax.py": "def get_config(:\n    pass\n",
    "raises.py": "def get_config():\n    return {}['model']\n",
}


def _train(*extra: str) -> list[str]:
    return train_args(W, D, *extra)


def _sample(*extra: str) -> list[str]:
    return ["sample.py", "--workdir", W, "--nometrics", "--out", f"{T}/s", *extra]


# (id, argv, words the error line must contain)
CASES = [
    # train.py: flags and config overrides
    ("unknown-config-key", _train("--config.train.nonexistent=1"), ["nonexistent"]),
    ("override-wrong-type", _train("--config.train.steps=many"), ["steps"]),
    ("missing-config-file", ["train.py", "--config", "configs/nope.py", "--workdir", W], ["nope"]),
    (
        "config-syntax-error",
        ["train.py", "--config", f"{R}/syntax.py", "--workdir", W],
        ["syntax.py:1", "invalid syntax"],
    ),
    (
        "config-raises",
        ["train.py", "--config", f"{R}/raises.py", "--workdir", W],
        ["raises.py:2", "KeyError"],
    ),
    ("missing-workdir-flag", ["train.py", "--config", "configs/digits_ddpm.py"], ["--workdir"]),
    ("unprepared-tfds", _train("--config.data.name=mnist"), ["mnist", "not prepared"]),
    (
        "fashion-dir-absent",
        _train("--config.data.name=fashion_mnist", f"--config.data.fashion_dir={T}/none"),
        ["fashion"],
    ),
    ("other-architecture", _train("--config.model.channels=16"), ["model.channels", "--force"]),
    ("resolution-indivisible", _train("--config.data.resolution=9"), ["resolution", "divisible"]),
    ("batch-indivisible", _train("--config.train.batch_size=6"), ["batch_size", "divisible"]),
    ("steps-per-call", _train("--config.train.steps_per_call=3"), ["steps_per_call"]),
    ("unknown-schedule", _train("--config.diffusion.schedule=cosin"), ["schedule"]),
    ("unknown-prediction", _train("--config.diffusion.prediction=noise"), ["prediction"]),
    ("bad-dtype", _train("--config.model.dtype=float8"), ["dtype"]),
    ("half-distributed", [*_train(), "--num_processes=2"], ["--coordinator", "missing"]),
    (
        "process-id-out-of-range",
        [*_train(), "--coordinator=localhost:1234", "--num_processes=2", "--process_id=2"],
        ["--process_id=2"],
    ),
    # sample.py
    ("sample-no-workdir-flag", ["sample.py", "--out", f"{T}/s"], ["--workdir"]),
    ("sample-workdir-missing", ["sample.py", "--workdir", f"{T}/nope"], ["does not exist"]),
    ("sample-workdir-not-a-run", ["sample.py", "--workdir", T], ["config.json"]),
    ("sample-step-missing", _sample("--step", "3"), ["step 3"]),
    ("sample-bad-sampler", _sample("--sampler", "euler"), ["sampler"]),
    ("sample-class-out-of-range", _sample("--classes", "12"), ["classes"]),
    ("sample-steps-too-many", _sample("--steps", "5000"), ["steps=5000"]),
    ("sample-negative-num", _sample("--num", "-1"), ["num"]),
    ("sample-guidance-type", _sample("--guidance", "high"), ["guidance"]),
    (
        "sample-out-not-writable",
        ["sample.py", "--workdir", W, "--out", "/proc/jldm/s"],
        ["--out"],
    ),
]


def _snapshot(folder: str) -> dict:
    """Relative path -> sha1 of every file under folder."""
    out = {}
    for root, _, names in os.walk(folder):
        for n in names:
            p = os.path.join(root, n)
            with open(p, "rb") as f:
                out[os.path.relpath(p, folder)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Run every case (a few at a time) on its own copy of one tiny trained run."""
    root = tmp_path_factory.mktemp("bad")
    data_dir, trained = str(root / "tfds"), str(root / "trained")
    assert run(tiny_config(data_dir, **{"train.steps": 2}), trained)
    reference = _snapshot(trained)
    for name, text in BROKEN_CONFIGS.items():
        (root / name).write_text(text)

    def one(case):
        name, argv, _ = case
        tmp = root / name
        workdir = str(tmp / "w")
        shutil.copytree(trained, workdir)
        args = [
            a.replace(W, workdir).replace(D, data_dir).replace(T, str(tmp)).replace(R, str(root))
            for a in argv
        ]
        assert not [a for a in args if "{" in a], args
        proc = cli(*args)
        created = sorted(set(os.listdir(tmp)) - {"w"})
        return name, (proc, _snapshot(workdir), created)

    # Most cases are flag parsing and a few imports: run them side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(one, CASES))
    return reference, results


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_error_line_and_changes_nothing(outcomes, case):
    reference, results = outcomes
    name, _, words = case
    proc, after, created = results[name]
    assert_user_error(proc, *words)
    assert after == reference, "the run's files changed"
    assert created == [], f"{created} written"


def test_the_table_covers_enough_mistakes():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)
