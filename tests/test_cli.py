"""train.py and sample.py as a user runs them, and train.py's entry called in-process.

User mistakes are tests/test_bad_inputs.py's table; here, what works.
"""

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from tqdm import tqdm

import sample
import train
from configs import digits_ddpm
from jldm.cli import run_cli
from jldm.scripts.train import bundled_config
from tests.clitools import assert_error_line, assert_user_error, cli, process_state, train_args
from tests.tiny import ROOT

CONFIG = os.path.join(ROOT, "configs", "digits_ddpm.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run through train.py, shared by the sampling tests."""
    root = tmp_path_factory.mktemp("cli")
    data_dir, workdir = str(root / "tfds"), str(root / "run")
    proc = cli(*train_args(workdir, data_dir, "--config.train.final_samples=True"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return data_dir, workdir


def test_train_writes_config_checkpoints_logs_and_a_grid(trained):
    _, workdir = trained
    for name in ("config.json", "metrics.jsonl", "samples_final.png", "tb"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]


def test_sample_writes_grid_and_npz_and_prints_quality(trained, tmp_path):
    _, workdir = trained
    out = str(tmp_path / "s")
    proc = cli(
        "sample.py",
        "--workdir",
        workdir,
        "--num",
        "2",
        "--classes",
        "3,7",
        "--steps",
        "3",
        "--guidance",
        "1.5",
        "--out",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out + ".npz")
    assert data["images"].shape == (4, 8, 8, 1)
    assert 0.0 <= data["images"].min() and data["images"].max() <= 1.0
    np.testing.assert_array_equal(data["labels"], [3, 3, 7, 7])
    assert os.path.getsize(out + ".png") > 0
    assert "class_accuracy" in proc.stdout and "frechet" in proc.stdout
    assert "real (" not in proc.stdout  # a subset of the classes has no real row to match

    # Every class: as many real training images of each, scored the same way, beside them.
    from jldm.compare import real_row
    from jldm.runs.config_io import read_config

    proc = cli("sample.py", "--workdir", workdir, "--num", "1", "--steps", "2", "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("real (10 training images): ")]
    shown = dict(item.rsplit(" ", 1) for item in line.split(": ", 1)[1].split(", "))
    want = real_row(read_config(workdir), 1)
    assert set(shown) == {"class_accuracy", "frechet", "kid"} | {
        k for k in ("precision", "recall") if want[k] is not None
    }
    for key, value in shown.items():
        assert float(value) == pytest.approx(want[key], abs=1e-4), key


def test_sampling_is_reproducible_given_the_seed(trained, tmp_path):
    _, workdir = trained
    outs = []
    for i, seed in enumerate(("5", "5", "6")):
        out = str(tmp_path / f"s{i}")
        proc = cli(
            "sample.py",
            "--workdir",
            workdir,
            "--num",
            "1",
            "--classes",
            "1",
            "--steps",
            "2",
            "--seed",
            seed,
            "--out",
            out,
            "--nometrics",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(np.load(out + ".npz")["images"])
    np.testing.assert_array_equal(outs[0], outs[1])
    assert np.abs(outs[0] - outs[2]).max() > 1e-3


def _recorder(seen: list):
    """A main that records what train.py's flags hold when it runs."""

    def record() -> None:
        c = train.FLAGS.config
        seen.append((c.model.channel_mult, c.train.steps, train.FLAGS.force, train.FLAGS.workdir))

    return record


def test_a_later_config_override_replaces_an_earlier_one():
    """Tuples too: ml_collections alone would concatenate (1, 2) and (1, 3) into (1, 2, 1, 3)."""
    seen = []
    argv = [
        "train.py",
        "--config",
        CONFIG,
        "--config.model.channel_mult=(1,2)",
        "--config.train.steps=5",
        "--config.model.channel_mult=(1,3)",
        "--config.train.steps=7",
    ]
    assert run_cli(_recorder(seen), argv, flag_values=train.FLAGS) == 0
    assert seen == [((1, 3), 7, False, None)]


def test_an_in_process_call_starts_from_the_defaults():
    """Neither flags nor config overrides of one call reach the next (tests run many calls)."""
    seen = []
    record = _recorder(seen)
    base = ["train.py", "--config", CONFIG]
    first = [*base, "--workdir=a", "--force", "--config.model.channel_mult=(1,3)"]
    for argv in (
        [*first, "--config.train.steps=5"],
        [*base, "--workdir=b"],
        [*base, "--workdir=c", "--config.model.channel_mult=(2,2)"],
    ):
        assert run_cli(record, argv, flag_values=train.FLAGS) == 0
    default = digits_ddpm.get_config()
    mult, steps = default.model.channel_mult, default.train.steps
    assert (mult, steps) != ((1, 3), 5)
    assert seen == [((1, 3), 5, True, "a"), (mult, steps, False, "b"), ((2, 2), steps, False, "c")]


def test_help_lists_the_flags_and_exits_zero(capsys):
    assert run_cli(train.main, ["train.py", "--help"], flag_values=train.FLAGS) == 0
    out, err = capsys.readouterr()
    assert out.startswith("Train a diffusion model") and err == ""
    for flag in ("--config", "--workdir", "--[no]force", "--coordinator", "--process_id"):
        assert flag in out, flag


# The installed commands (pyproject's [project.scripts]) and flags each help text must list.
COMMANDS = {
    "jldm-train": ("--config", "--workdir", "--[no]force"),
    "jldm-sample": ("--workdir", "--sampler", "--steps", "--pretrained"),
    "jldm-fid": ("--weights", "--batch_size", "--save_stats"),
    "jldm-compare": ("--nfe",),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_installed_command_prints_its_help_and_exits_zero(command):
    path = os.path.join(os.path.dirname(sys.executable), command)
    proc = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    for flag in COMMANDS[command]:
        assert flag in proc.stdout, (flag, proc.stdout[:2000])


def test_the_installed_train_command_runs_a_bundled_config_by_name(tmp_path):
    """No configs/ folder beside an installed jldm-train: --config NAME is a bundled config."""
    path = os.path.join(os.path.dirname(sys.executable), "jldm-train")
    argv = [path, "--config", "digits_dsm", "--workdir", str(tmp_path / "w")]
    proc = subprocess.run(
        [*argv, "--config.train.steps=-1"], capture_output=True, text=True, cwd=tmp_path
    )
    # The override reached digits_dsm's train section: that config was loaded.
    assert_user_error(proc, "train.steps=-1")
    assert os.listdir(tmp_path) == []
    assert bundled_config(["x", "--config=digits_dsm"])[1] == "--config=" + os.path.join(
        ROOT, "jldm", "configs", "digits_dsm.py"
    )
    # Paths and unknown names are left to the flag parser.
    for kept in (["x", "--config", "configs/digits_dsm.py"], ["x", "--config", "nope"]):
        assert bundled_config(kept) == kept


def test_training_in_process_leaves_no_threads_or_handlers_behind(
    trained, tmp_path, capsys, monkeypatch
):
    """Tests call train.py's main in-process: a run must clean up after itself, as a process."""
    data_dir, workdir = trained
    resumed = tmp_path / "w"
    shutil.copytree(workdir, resumed)
    monkeypatch.chdir(ROOT)  # train_args names configs/ as a user in the repository does
    threads, state = set(threading.enumerate()), process_state()
    argv = train_args(
        resumed, data_dir, "--config.train.steps=6", "--config.train.final_samples=True"
    )
    assert run_cli(train.main, argv, flag_values=train.FLAGS) == 0
    out = capsys.readouterr().out
    # The script's own line, and the library's logged one as the same bare line on stdout.
    assert f"trained: {resumed}" in out
    assert f"final samples: {resumed / 'samples_final.png'}\n" in out
    assert sorted(os.listdir(resumed / "checkpoints")) == ["2", "4", "6"]
    assert process_state() == state, "signal handlers or hooks left behind"
    # tqdm's monitor is one thread per process, started by its first bar and reused by the next.
    threads.add(getattr(tqdm, "monitor", None))
    # Orbax and the input pipeline end their threads on close; give them a moment to exit.
    deadline = time.time() + 10
    while (left := set(threading.enumerate()) - threads) and time.time() < deadline:
        time.sleep(0.1)
    assert not left, [t.name for t in left]


def test_sigterm_writes_a_checkpoint_and_exits_zero(trained, tmp_path):
    data_dir, _ = trained
    workdir = tmp_path / "w"
    args = [
        sys.executable,
        *train_args(
            workdir,
            data_dir,
            "--config.train.steps=100000",
            "--config.train.checkpoint_every=50000",
            "--config.train.log_every=1",
        ),
    ]
    proc = subprocess.Popen(
        args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    log = workdir / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    line = [s for s in out.splitlines() if s.startswith("stopped by SIGTERM")]
    assert len(line) == 1, out
    step = int(line[0].split("at step ")[1].split(":")[0])
    assert step >= 3
    assert os.listdir(workdir / "checkpoints") == [str(step)]


def test_sampling_at_scale_writes_uint8_shards_over_all_devices_and_resumes(
    trained, tmp_path, capsys
):
    import jax

    import jldm
    from jldm.sampling.pipeline import make_generator
    from jldm.sampling.shards import MANIFEST

    _, workdir = trained
    out = tmp_path / "shards"
    argv = ["sample.py", "--workdir", workdir, "--out", str(out), "--num", "10"]
    argv += ["--batch_size", "4", "--sampler", "ddim", "--steps", "2", "--seed", "3"]
    assert run_cli(sample.main, argv, flag_values=sample.FLAGS) == 0
    names = sorted(os.listdir(out))
    assert names == [MANIFEST, "shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    shards = [np.load(out / n) for n in names[1:]]
    assert [len(z["images"]) for z in shards] == [4, 4, 2]
    assert all(z["images"].dtype == np.uint8 for z in shards)
    labels = np.concatenate([z["labels"] for z in shards])
    np.testing.assert_array_equal(labels, np.arange(10) % 10)  # classes cycled

    # Shard 1 is sampled from fold_in(key, 1), the batch split over the test's 4 devices: the
    # same images as the generator on one device.
    run = jldm.load(workdir)
    gen = make_generator(run, labels[4:8], sampler="ddim", steps=2, guidance=2.0)
    one = np.asarray(jax.jit(gen.fn)(*gen.args(jax.random.fold_in(jax.random.PRNGKey(3), 1))))
    assert np.abs(np.round(one * 255) - shards[1]["images"]).max() <= 1

    # A stopped job resumes: only the missing shard is sampled, to the same bytes.
    before = {n: (out / n).read_bytes() for n in names[1:]}
    stamp = os.stat(out / "shard_00000.npz").st_mtime_ns
    os.remove(out / "shard_00001.npz")
    capsys.readouterr()
    assert run_cli(sample.main, argv, flag_values=sample.FLAGS) == 0
    assert "1 shards written" in capsys.readouterr().out
    assert {n: (out / n).read_bytes() for n in names[1:]} == before
    assert os.stat(out / "shard_00000.npz").st_mtime_ns == stamp

    # Other settings into the same folder, or a batch the devices cannot split: refused.
    for extra, words in (
        (["--seed", "4"], ["seed", "another --out"]),
        (["--batch_size", "6"], ["--batch_size=6", "devices"]),
    ):
        code = run_cli(sample.main, [*argv, *extra], flag_values=sample.FLAGS)
        assert_error_line(code, capsys.readouterr().err, *words)
    assert {n: (out / n).read_bytes() for n in names[1:]} == before
