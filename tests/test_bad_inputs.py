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
    # (a new workdir: the trained one would refuse another data.name first)
    (
        "unprepared-tfds",
        train_args(f"{T}/new", D, "--config.data.name=mnist"),
        ["mnist", "not prepared"],
    ),
    (
        "fashion-dir-absent",
        train_args(
            f"{T}/new", D, "--config.data.name=fashion_mnist", f"--config.data.fashion_dir={T}/x"
        ),
        ["fashion"],
    ),
    ("other-architecture", _train("--config.model.channels=16"), ["model.channels", "--force"]),
    (
        "resolution-indivisible",
        _train("--config.model.channel_mult=1,2", "--config.data.resolution=9"),
        ["resolution", "divisible"],
    ),
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
    ("sample-bad-sampler", _sample("--sampler", "rk45"), ["rk45", "not known"]),
    ("sample-class-out-of-range", _sample("--classes", "12"), ["classes"]),
    ("sample-steps-too-many", _sample("--steps", "5000"), ["steps=5000"]),
    ("sample-negative-num", _sample("--num", "-1"), ["num"]),
    ("sample-guidance-type", _sample("--guidance", "high"), ["guidance"]),
    (
        "sample-out-not-writable",
        ["sample.py", "--workdir", W, "--out", "/proc/jldm/s"],
        ["--out"],
    ),
    # every config value against its range, before any work
    ("batch-size-zero", _train("--config.train.batch_size=0"), ["train.batch_size=0", ">= 1"]),
    ("batch-size-negative", _train("--config.train.batch_size=-4"), ["train.batch_size=-4"]),
    ("steps-negative", _train("--config.train.steps=-5"), ["train.steps=-5", ">= 0"]),
    ("ema-decay-above-one", _train("--config.train.ema_decay=1.5"), ["ema_decay=1.5", "[0, 1)"]),
    ("lr-nan", _train("--config.train.lr=nan"), ["train.lr=nan", "> 0"]),
    ("lr-negative", _train("--config.train.lr=-0.1"), ["train.lr=-0.1"]),
    ("max-skipped-above-one", _train("--config.train.max_skipped_fraction=2.0"), ["[0, 1]"]),
    ("timesteps-zero", _train("--config.diffusion.timesteps=0"), ["diffusion.timesteps=0"]),
    ("dropout-one", _train("--config.model.dropout=1.0"), ["model.dropout=1.0"]),
    ("channel-mult-zero", _train("--config.model.channel_mult=1,0"), ["model.channel_mult"]),
    ("guidance-nan-in-config", _train("--config.sample.guidance=nan"), ["sample.guidance=nan"]),
    # the workdir itself
    ("workdir-is-a-file", train_args(f"{T}/a_file", D), ["a_file", "is a file"]),
    ("checkpoints-is-a-file", _train(), ["checkpoints", "is a file"]),
    ("workdir-read-only", _train(), ["not writable"]),
    # sample.py: 0 is a value, and NaN is not
    ("sample-num-zero", _sample("--num", "0"), ["--num=0", ">= 1"]),
    ("sample-steps-zero", _sample("--steps", "0"), ["--steps=0", ">= 1"]),
    ("sample-guidance-nan", _sample("--guidance", "nan"), ["--guidance=nan"]),
    ("sample-eta-nan", _sample("--eta", "nan"), ["--eta=nan"]),
    ("sample-eta-above-one", _sample("--eta", "1.5"), ["--eta=1.5"]),
    ("sample-checkpoints-is-a-file", _sample(), ["checkpoints", "is a file"]),
    (
        "pretrained-steps-zero",
        ["sample.py", "--pretrained", f"{T}/sd", "--prompt", "a", "--steps", "0"],
        ["--steps=0"],
    ),
]


def _checkpoints_a_file(tmp) -> None:
    shutil.rmtree(tmp / "w" / "checkpoints")
    (tmp / "w" / "checkpoints").write_text("not a folder")


def _read_only(tmp) -> None:
    for root, dirs, _ in os.walk(tmp / "w"):
        for d in [".", *dirs]:
            os.chmod(os.path.join(root, d), 0o555)


# Cases whose files are set up before the run: the snapshot is taken after the setup.
SETUPS = {
    "workdir-is-a-file": lambda tmp: (tmp / "a_file").write_text("not a folder"),
    "checkpoints-is-a-file": _checkpoints_a_file,
    "sample-checkpoints-is-a-file": _checkpoints_a_file,
    "workdir-read-only": _read_only,
}
# A read-only folder is writable for root: these cases need an ordinary user.
NOT_AS_ROOT = {"workdir-read-only"}
SCRIPTS = {"train.py": train, "sample.py": sample}
# Cases that also run as real processes, one per way a mistake ends: absl's flag parsing, an
# error from the library once it is imported, the multi-process settings, sample.py's reading
# of a run and of its output folder.
IN_A_PROCESS = {
    "override-wrong-type",
    "ema-decay-above-one",
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
    """One tiny trained run, and the broken configs beside it."""
    root = tmp_path_factory.mktemp("bad")
    data_dir, workdir = str(root / "tfds"), str(root / "trained")
    assert run(tiny_config(data_dir, **{"train.steps": 2}), workdir)
    for name, text in BROKEN_CONFIGS.items():
        (root / name).write_text(text)
    return root, data_dir, workdir


def _prepare(trained, tmp, name: str, argv: list[str]) -> list[str]:
    """Copy the trained run to tmp/w, apply the case's setup and fill its argv in for it."""
    root, data_dir, workdir = trained
    shutil.copytree(workdir, tmp / "w")
    if name in SETUPS:
        SETUPS[name](tmp)
    fill = {W: str(tmp / "w"), D: data_dir, T: str(tmp), R: str(root)}
    args = []
    for a in argv:
        for placeholder, value in fill.items():
            a = a.replace(placeholder, value)
        args.append(a)
    assert not [a for a in args if "{" in a], args
    return args


def _assert_nothing_changed(before: dict, tmp) -> None:
    after = _snapshot(str(tmp))
    assert sorted(set(after) - set(before)) == [], "files written"
    assert after == before, "files changed"


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mistake_is_one_error_line_and_changes_nothing(
    trained, tmp_path, capsys, monkeypatch, case
):
    name, argv, words = case
    if name in NOT_AS_ROOT and os.geteuid() == 0:
        pytest.skip("root writes to read-only folders")
    args = _prepare(trained, tmp_path, name, argv)
    before = _snapshot(str(tmp_path))
    monkeypatch.chdir(ROOT)  # the configs/ paths, as for a user in the repository
    threads, state = set(threading.enumerate()), process_state()
    script = SCRIPTS[args[0]]
    code = run_cli(script.main, args, flag_values=script.FLAGS)
    _, err = capsys.readouterr()
    assert_error_line(code, err, *words)
    _assert_nothing_changed(before, tmp_path)
    assert process_state() == state, "signal handlers or hooks left behind"
    # Orbax's event loops close their executors without joining them: a worker thread may still
    # be exiting. One that ends within a few seconds is not left running.
    started = set(threading.enumerate()) - threads
    for t in started:
        t.join(timeout=5)
    left = [t.name for t in started if t.is_alive()]
    assert left == [], f"threads left running: {left}"


@pytest.fixture(scope="module")
def process_outcomes(trained, tmp_path_factory):
    """Run PROCESS_CASES as processes (a few at a time), each on its own copy of the run."""
    base = tmp_path_factory.mktemp("processes")

    def one(case):
        name, argv, _ = case
        tmp = base / name
        tmp.mkdir()
        args = _prepare(trained, tmp, name, argv)
        before = _snapshot(str(tmp))
        return name, (cli(*args), tmp, before)

    # Most cases are flag parsing and a few imports: run them side by side.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        return dict(pool.map(one, PROCESS_CASES))


@pytest.mark.parametrize("case", PROCESS_CASES, ids=[c[0] for c in PROCESS_CASES])
def test_mistake_in_a_process_is_one_error_line_and_changes_nothing(
    trained, process_outcomes, case
):
    name, _, words = case
    proc, tmp, before = process_outcomes[name]
    assert_user_error(proc, *words)
    _assert_nothing_changed(before, tmp)


def test_the_table_covers_enough_mistakes():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


def test_non_finite_samples_are_refused_and_nothing_is_written(
    trained, tmp_path, capsys, monkeypatch
):
    """A run whose params went NaN: sample.py says so and exits 2 instead of saving NaN."""
    import jax
    import numpy as np

    import jldm

    real = jldm.load

    def poisoned(*args, **kwargs):
        run = real(*args, **kwargs)
        return run._replace(params=jax.tree_util.tree_map(lambda p: p * np.nan, run.params))

    monkeypatch.setattr(jldm, "load", poisoned)
    args = _prepare(trained, tmp_path, "non-finite", _sample("--num", "1", "--steps", "2"))
    before = _snapshot(str(tmp_path))
    code = run_cli(sample.main, args, flag_values=sample.FLAGS)
    assert_error_line(code, capsys.readouterr().err, "non-finite samples")
    _assert_nothing_changed(before, tmp_path)
