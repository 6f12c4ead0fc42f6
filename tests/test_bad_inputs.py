"""A table of user mistakes on train.py and sample.py: each is one `error:` line and exit 2.

Every case runs against its own copy of one tiny trained run, and the copy must come back
byte-for-byte unchanged: a refused command never overwrites what is on disk. The cases run
in-process through the scripts' entry functions (jldm.cli.run_cli), a few of them also as real
processes.
"""

import concurrent.futures
import hashlib
import os
import shutil
import threading

import pytest

import sample
import train
from jldm.api import train as run
from jldm.cli import run_cli
from tests.clitools import assert_error_line, assert_user_error, cli, process_state, train_args
from tests.tiny import ROOT, tiny_config

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
    ("unknown-flag", [*_train(), "--workdri=x"], ["workdri"]),
    ("positional-argument", [*_train(), "steps=5"], ["steps=5", "--name=value"]),
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
SCRIPTS = {"train.py": train, "sample.py": sample}
# Cases that also run as real processes, one per way a mistake ends: absl's flag parsing, an
# error from the library once it is imported, the multi-process settings, sample.py's reading
# of a run and of its output folder.
IN_A_PROCESS = {
    "override-wrong-type",
    "other-architecture",
    "half-distributed",
    "sample-step-missing",
    "sample-out-not-writable",
}
PROCESS_CASES = [c for c in CASES if c[0] in IN_A_PROCESS]


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
def trained(tmp_path_factory):
    """One tiny trained run, its files' snapshot, and the broken configs beside it."""
    root = tmp_path_factory.mktemp("bad")
    data_dir, workdir = str(root / "tfds"), str(root / "trained")
    assert run(tiny_config(data_dir, **{"train.steps": 2}), workdir)
    for name, text in BROKEN_CONFIGS.items():
        (root / name).write_text(text)
    return root, data_dir, workdir, _snapshot(workdir)


def _prepare(trained, tmp, argv: list[str]) -> list[str]:
    """Copy the trained run to tmp/w and fill the case's argv in for it."""
    root, data_dir, workdir, _ = trained
    shutil.copytree(workdir, tmp / "w")
    fill = {W: str(tmp / "w"), D: data_dir, T: str(tmp), R: str(root)}
    args = []
    for a in argv:
        for placeholder, value in fill.items():
            a = a.replace(placeholder, value)
        args.append(a)
    assert not [a for a in args if "{" in a], args
    return args


def _assert_nothing_changed(trained, tmp) -> None:
    assert _snapshot(str(tmp / "w")) == trained[3], "the run's files changed"
    created = sorted(set(os.listdir(tmp)) - {"w"})
    assert created == [], f"{created} written"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_error_line_and_changes_nothing(
    trained, tmp_path, capsys, monkeypatch, case
):
    _, argv, words = case
    args = _prepare(trained, tmp_path, argv)
    monkeypatch.chdir(ROOT)  # the configs/ paths, as for a user in the repository
    threads, state = set(threading.enumerate()), process_state()
    script = SCRIPTS[args[0]]
    code = run_cli(script.main, args, flag_values=script.FLAGS)
    _, err = capsys.readouterr()
    assert_error_line(code, err, *words)
    _assert_nothing_changed(trained, tmp_path)
    assert process_state() == state, "signal handlers or hooks left behind"
    left = [t.name for t in set(threading.enumerate()) - threads]
    assert left == [], f"threads left running: {left}"


@pytest.fixture(scope="module")
def process_outcomes(trained, tmp_path_factory):
    """Run PROCESS_CASES as processes (a few at a time), each on its own copy of the run."""
    base = tmp_path_factory.mktemp("processes")

    def one(case):
        name, argv, _ = case
        tmp = base / name
        tmp.mkdir()
        proc = cli(*_prepare(trained, tmp, argv))
        return name, (proc, tmp)

    # Most cases are flag parsing and a few imports: run them side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, PROCESS_CASES))


@pytest.mark.parametrize("case", PROCESS_CASES, ids=[c[0] for c in PROCESS_CASES])
def test_mistake_in_a_process_is_one_error_line_and_changes_nothing(
    trained, process_outcomes, case
):
    name, _, words = case
    proc, tmp = process_outcomes[name]
    assert_user_error(proc, *words)
    _assert_nothing_changed(trained, tmp)


def test_the_table_covers_enough_mistakes():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)
