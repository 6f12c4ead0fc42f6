"""Every value checked for what it means, not only its range: float32 representability, seeds
without aliasing, divisibility, the dtypes and values of user arrays, sampler step bounds,
sizes that cannot fit, names that do not exist, the structure of config files.

No case trains or compiles a sampler: each is refused before that work (a run is its config
and module, with no params), and refusals through train.py and sample.py change nothing on
disk.
"""

import importlib
import logging
import os

import jax
import numpy as np
import pytest

import jldm
import sample
import train
from jldm.build import samplers
from jldm.build.model import build_model
from jldm.build.noise import build_schedule
from jldm.build.ranges import check_config
from jldm.cli import run_cli
from jldm.errors import UserError
from jldm.runs.config_io import write_config
from jldm.runs.load import Loaded
from jldm.sampling.run import conditions
from jldm.scripts.sample_flags import read_image
from tests.clitools import assert_error_line
from tests.tiny import ROOT, tiny_config, tiny_flags

W, T = "{workdir}", "{tmp}"
BUNDLED = [
    n[:-3]
    for n in os.listdir(os.path.join(ROOT, "jldm", "configs"))
    if n.endswith(".py") and n not in ("__init__.py", "default.py")
]


def _snapshot(folder) -> dict:
    """Relative path -> bytes of every file under folder."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _run(**overrides) -> Loaded:
    """The tiny config as a run, without params: everything before sampling's compile."""
    config = tiny_config("/unused", **overrides)
    return Loaded(config, build_model(config), None, build_schedule(config), 2)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A run folder holding the tiny config; jldm.load answers with its run (no params)."""
    folder = tmp_path / "w"
    config = tiny_config(str(tmp_path / "tfds"))
    write_config(str(folder), config)
    monkeypatch.setattr(jldm, "load", lambda w, step=None, **k: _run())
    monkeypatch.chdir(ROOT)
    return folder


def _cli(script, argv, tmp_path, capsys, *words) -> None:
    """argv through script in-process: one error line with words, nothing on disk changed."""
    before = _snapshot(tmp_path)
    fill = {W: str(tmp_path / "w"), T: str(tmp_path)}
    args = [a.replace(W, fill[W]).replace(T, fill[T]) for a in argv]
    code = run_cli(script.main, args, flag_values=script.FLAGS)
    assert_error_line(code, capsys.readouterr().err, *words)
    assert _snapshot(tmp_path) == before


def _train(*extra):
    return ["train.py", "--config", "configs/digits_ddpm.py", "--workdir", W, *extra]


def _sample(*extra):
    return ["sample.py", "--workdir", W, "--nometrics", "--out", f"{T}/s", *extra]


# (id, argv, words of the error line)
CLI_CASES = [
    # numbers whose float32 value is inf or 0, and ints beyond int32 (the step counter's type)
    ("lr-beyond-float32", _train("--config.train.lr=1e300"), ["train.lr=1e+300", "float32"]),
    (
        "beta-zero-in-float32",
        _train("--config.diffusion.schedule=linear", "--config.diffusion.beta_start=1e-50"),
        ["0 in float32"],
    ),
    ("steps-beyond-int32", _train(f"--config.train.steps={2**63}"), ["train.steps", "2147483647"]),
    ("config-seed-beyond-int32", _train(f"--config.seed={2**64}"), ["seed="]),
    ("guidance-huge-in-config", _train("--config.sample.guidance=1e30"), ["sample.guidance"]),
    # divisibility
    ("norm-groups", _train("--config.model.norm_groups=3"), ["norm_groups=3", "8 channels"]),
    ("heads", _train("--config.model.num_heads=3"), ["num_heads=3", "8 channels"]),
    # values whose meaning is another config's: an empty ladder, a shrinking noise schedule
    ("no-levels", _train("--config.model.channel_mult=()"), ["channel_mult=()", "non-empty"]),
    (
        "betas-shrinking",
        _train("--config.diffusion.schedule=linear", "--config.diffusion.beta_start=0.5"),
        ["beta_start=0.5 is above beta_end=0.02", "swap them"],
    ),
    # values the run would not read: betas under the cosine schedule, ddpm keys elsewhere
    (
        "betas-under-cosine",
        _train("--config.diffusion.beta_start=0.5"),
        ["--config.diffusion.beta_start=0.5 would change nothing", "cosine schedule"],
    ),
    (
        "ddpm-key-on-another-objective",
        _train("--config.diffusion.objective=edm", "--config.diffusion.timesteps=50"),
        ["diffusion.objective=edm reads no diffusion.timesteps"],
    ),
    # sizes that cannot fit, and step counts without a bound
    ("batch-beyond-memory", _train("--config.train.batch_size=1000000000"), ["batch_size"]),
    (
        "sample-steps-in-config",
        _train(
            "--config.diffusion.objective=vpsde",
            "--config.sample.sampler=em",
            "--config.sample.steps=1000000000",
        ),
        ["em steps=1000000000", "1..100000", "sample.steps"],
    ),  # fmt: skip
    # sample.py
    ("guidance-1e30", _sample("--guidance", "1e30"), ["--guidance=1e+30", "[0, 100]"]),
    ("guidance-1e300", _sample("--guidance", "1e300"), ["--guidance=1e+300"]),
    ("seed-2^64", _sample("--seed", str(2**64)), ["--seed=18446744073709551616", "4294967295"]),
    ("seed-negative", _sample("--seed", "-1"), ["--seed=-1"]),
    ("num-beyond-int32", _sample("--num", str(2**40)), ["--num=1099511627776"]),
    ("num-beyond-memory", _sample("--num", "1000000000"), ["10000000000 images", "--batch_size"]),
    ("classes-not-a-class", _sample("--classes", "3,x"), ["--classes=3,x"]),
    ("classes-out-of-range", _sample("--classes", "3,10"), ["[10]", "0..9"]),
    # flags of the other input, which would be ignored
    ("height-on-a-run", _sample("--height", "64"), ["--height is for --pretrained folders"]),
    ("negative-on-a-run", _sample("--negative_prompt", "x"), ["--negative_prompt is for"]),
    ("precision-on-a-run", _sample("--precision", "float32"), ["--precision is for"]),
    (
        "classes-on-pretrained",
        ["sample.py", "--pretrained", T, "--prompt", "a", "--out", f"{T}/s", "--classes", "1"],
        ["--classes is for runs of --workdir: drop it with --pretrained"],
    ),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_a_value_that_means_nothing_is_one_error_line(workdir, tmp_path, capsys, case):
    _, argv, words = case
    if argv[0] == "train.py":
        argv = [*argv[:5], *tiny_flags(str(tmp_path / "tfds")), *argv[5:]]
    _cli(train if argv[0] == "train.py" else sample, argv, tmp_path, capsys, *words)


def test_the_steps_of_every_sampler_are_bounded():
    continuous = tiny_config("/unused", **{"diffusion.objective": "vpsde"})
    discrete = tiny_config("/unused")
    for name, s in samplers.REGISTRY.items():
        for config in (continuous, discrete):
            top = s.max_steps(config)
            assert 1 <= top <= samplers.MAX_STEPS, name
            samplers.check_steps(s, config, top)
            with pytest.raises(UserError, match=f"{name} steps={top + 1} must be in 1..{top}"):
                samplers.check_steps(s, config, top + 1)
    with pytest.raises(UserError, match="steps='4' is no whole number"):
        samplers.check_steps(samplers.get("ddim"), discrete, "4")


def test_an_nfe_budget_beyond_the_samplers_bound_is_refused_not_clamped(
    tmp_path, capsys, monkeypatch
):
    from jldm import compare as table
    from jldm.runs import load
    from jldm.scripts import compare

    discrete = tiny_config("/unused")
    top = samplers.get("ddim").max_steps(discrete)  # one evaluation a step
    samplers.check_nfe(discrete, "ddim", top, 1.0)
    samplers.check_nfe(discrete, "ddim", 2 * top, 3.0)  # guided: two evaluations a step
    with pytest.raises(UserError, match=f"--nfe={top + 1} is more than ddim can spend: at most "):
        samplers.check_nfe(discrete, "ddim", top + 1, 1.0)
    continuous = tiny_config("/unused", **{"diffusion.objective": "vpsde"})
    with pytest.raises(UserError, match="at most 100001 network evaluations"):
        samplers.check_nfe(continuous, "em", 10**9, 1.0)
    # jldm-compare refuses it before the first sample, naming the run
    (tmp_path / "w").mkdir()
    monkeypatch.setattr(load, "check_run", lambda w: discrete)
    monkeypatch.setattr(table, "compare_one", lambda *a, **k: pytest.fail("sampled"))
    args = ["jldm-compare", str(tmp_path / "w"), "--nfe=1000000000", f"--out={tmp_path}/t"]
    before = _snapshot(tmp_path)
    code = run_cli(compare.main, args, compare.FLAGS, positional=True)
    assert_error_line(code, capsys.readouterr().err, f"{tmp_path / 'w'}: --nfe=1000000000")
    assert _snapshot(tmp_path) == before


def test_long_sampling_shows_its_elapsed_time_on_a_terminal_only(monkeypatch):
    import io
    import time

    from jldm.sampling.progress import running

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream, shown in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr("sys.stderr", stream)
        with running("sampling 1 images, em 100000 steps", tick=0.01):
            time.sleep(0.1)
        assert ("sampling 1 images, em 100000 steps: 00:00" in stream.getvalue()) == shown


@pytest.mark.parametrize(
    "labels, words",
    [
        ([3.7], "not whole numbers"),
        ([[1, 2], [3, 4]], r"shape \(2, 2\)"),
        ([12], "0..9"),
        ([-1], "0..9"),
        (["3"], "dtype <U1"),
    ],
)
def test_api_labels_are_whole_class_ids_of_one_axis(labels, words):
    run = _run()
    with pytest.raises(UserError, match=words):
        jldm.generate(run, labels=labels, steps=2)
    assert conditions(run, [3.0, 7]).tolist() == [3, 7]  # whole floats are class ids


@pytest.mark.parametrize(
    "options, words",
    [
        ({"guidance": 1e300}, "guidance=1e\\+300"),
        ({"seed": 2**64}, "seed=18446744073709551616"),
        ({"seed": -1}, "seed=-1"),
        ({"size": (65536, 65536)}, "more than the .* GiB"),
        ({"known": (np.full((1, 8, 8, 1), np.nan), np.ones((1, 8, 8, 1)))}, "NaN"),
    ],
)
def test_api_sampling_options_are_refused_before_compiling(options, words):
    with pytest.raises(UserError, match=words):
        jldm.generate(_run(), labels=[1], steps=2, sampler="ddim", **options)


def test_seeds_that_would_alias_are_the_ones_refused():
    # Without jax_enable_x64 a key holds 32 bits of the seed: 2^32 + 5 would be seed 5.
    assert (jax.random.PRNGKey(2**32 + 5) == jax.random.PRNGKey(5)).all()
    with pytest.raises(UserError):
        jldm.generate(_run(), labels=[1], steps=2, seed=2**32 + 5)


@pytest.mark.parametrize(
    "array, words",
    [
        (np.full((8, 8, 1), np.nan, np.float32), "NaN"),
        (np.full((8, 8, 1), 7.0, np.float32), r"values in \[7, 7\]"),
        (np.full((8, 8, 1), 3, np.int64), "int64"),
        (np.full((8, 8, 1), "a"), "<U1"),
    ],
)
def test_source_arrays_are_refused_by_dtype_and_value(tmp_path, array, words):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(UserError, match=words):
        read_image(str(tmp_path / "x.npy"), "--source", 1)


def test_a_uint8_source_is_scaled_and_a_mask_keeps_its_numbers(tmp_path):
    np.save(tmp_path / "u8.npy", np.full((8, 8, 1), 51, np.uint8))
    np.save(tmp_path / "mask.npy", np.full((8, 8), 255, np.uint8))
    np.testing.assert_allclose(read_image(str(tmp_path / "u8.npy"), "--source", 1), 0.2)
    assert (read_image(str(tmp_path / "mask.npy"), "--mask", None) == 255).all()
    np.save(tmp_path / "nan.npy", np.full((8, 8), np.nan))
    with pytest.raises(UserError, match="NaN"):
        read_image(str(tmp_path / "nan.npy"), "--mask", None)


def test_prompt_words_outside_the_vocabulary_are_named(caplog):
    run = _run(**{"model.conditioning": "text"})
    with caplog.at_level(logging.WARNING, logger="jldm"):
        ids = conditions(run, prompts=["a handwritten digit seven", "a purple seven!"])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'purple', '!'" in lines[0] and "a purple seven!" in lines[0]
    assert ids.shape[0] == 2


CONFIG_FILES = {
    "no-train": ("del c['train']", "no 'train' section"),
    "no-sample": ("del c['sample']", "no 'sample' section"),
    "model-a-number": ("del c['model']; c['model'] = 3", "a value instead of a 'model' section"),
    "a-dict": ("c = c.to_dict()", "a dict, not an ml_collections.ConfigDict"),
}


@pytest.mark.parametrize("name", list(CONFIG_FILES))
def test_a_config_file_of_the_wrong_structure_is_named(tmp_path, capsys, monkeypatch, name):
    edit, words = CONFIG_FILES[name]
    path = tmp_path / f"{name}.py"
    path.write_text(
        "from configs import digits_ddpm\n\n\ndef get_config():\n"
        f"    c = digits_ddpm.get_config()\n    {edit}\n    return c\n"
    )
    monkeypatch.chdir(ROOT)
    argv = ["train.py", "--config", str(path), "--workdir", str(tmp_path / "w")]
    _cli(train, argv, tmp_path, capsys, words, name)


def test_a_key_the_config_lacks_is_named(tmp_path, capsys, monkeypatch):
    path = tmp_path / "no_batch.py"
    path.write_text(
        "from configs import digits_ddpm\n\n\ndef get_config():\n"
        "    c = digits_ddpm.get_config()\n    del c.train['batch_size']\n    return c\n"
    )
    monkeypatch.chdir(ROOT)
    argv = ["train.py", "--config", str(path), "--workdir", str(tmp_path / "w")]
    _cli(train, argv, tmp_path, capsys, "no key 'batch_size'")


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_every_bundled_config_meets_the_checks(name):
    from jldm.build.autoencoder import build_autoencoder
    from jldm.runs.kinds import kind_of
    from jldm.train.checks import check_sampling, check_structure

    config = importlib.import_module(f"jldm.configs.{name}").get_config()
    check_structure(config)
    check_config(config)
    if kind_of(config) in ("pixel", "latent"):
        build_model(config)
        check_sampling(config)
    if kind_of(config) == "latent":
        build_autoencoder(config)
