"""Score objectives on the UNet: preconditioning in closed form, the loss at the exact score,
and train -> sample through the loop for an energy-parameterised NCSN and an SDE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm import api
from jldm.api import train as run
from jldm.build import objectives, samplers
from jldm.build.noise import build_sde, ncsn_sigmas, noise_coefs
from jldm.build.objectives import build_loss
from jldm.errors import UserError
from tests.tiny import tiny_config


def _config(objective, **kw):
    known = objectives.REGISTRY.get(objective)
    sampler = samplers.samplers_of(known)[0] if known else "ddim"
    over = {"diffusion.objective": objective, "sample.sampler": sampler, **kw}
    return tiny_config("/unused", **over)


class _Fake:
    """Stands in for the UNet: apply(vars, x_in, time_in, labels, ...) = fn(x_in, time_in)."""

    def __init__(self, fn):
        self.fn = fn

    def apply(self, variables, x, t, labels, train=False, rngs=None):
        return self.fn(x, t)


@pytest.mark.parametrize("objective", ["ncsn", "vesde", "vpsde", "subvpsde"])
def test_network_inputs_are_scaled_to_unit_variance_and_time_in_0_999(objective):
    config = _config(objective)
    seen = {}

    def record(x_in, t_in):
        seen["x"], seen["t"] = x_in, t_in
        return x_in

    c = jnp.array([0.01, 25.0]) if objective == "ncsn" else jnp.array([1e-5, 1.0])
    net = objectives.make_score_net(config, _Fake(record))
    x = jnp.ones((2, 4, 4, 1))
    s = net(None, x, c, None)
    alpha, std, _ = noise_coefs(config)(c)
    c_in = 1 / np.sqrt(np.asarray(alpha) ** 2 + np.asarray(std) ** 2)
    np.testing.assert_allclose(seen["x"][:, 0, 0, 0], c_in, rtol=1e-5)
    np.testing.assert_allclose(seen["t"], [0.0, 999.0], atol=0.02)
    # score parameterisation: s = -u / std with u the network output
    np.testing.assert_allclose(s[:, 0, 0, 0], -c_in / np.asarray(std), rtol=1e-4)


@pytest.mark.parametrize("objective", ["ncsn", "vpsde"])
def test_energy_with_zero_denoiser_is_the_score_of_n0_std2(objective):
    config = _config(objective, **{"diffusion.parameterization": "energy"})
    net = objectives.make_score_net(config, _Fake(lambda x, t: jnp.zeros_like(x)))
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 4, 1))
    c = jnp.array([0.5, 2.0, 10.0]) if objective == "ncsn" else jnp.array([0.1, 0.5, 0.9])
    _, std, _ = noise_coefs(config)(c)
    expected = -x / np.asarray(std).reshape(-1, 1, 1, 1) ** 2
    np.testing.assert_allclose(net(None, x, c, None), expected, rtol=1e-5)


def test_ncsn_loss_at_the_exact_score_of_gaussian_data_matches_the_closed_form():
    # x0 ~ N(0, I): p_sigma = N(0, (1 + sigma^2) I), score -x / (1 + sigma^2); the DSM loss at
    # it is 0.5 D E_sigma[1 / (1 + sigma^2)] (sigma uniform over the ladder).
    config = _config("ncsn", **{"diffusion.cond_drop": 0.0})
    f = config.diffusion
    log_ratio = math.log(f.sigma_max / f.sigma_min)

    def exact(x_in, t_in):  # u = -std * score, the network sees x_in = x / sqrt(1 + sigma^2)
        sigma = (f.sigma_min * jnp.exp(t_in / 999.0 * log_ratio)).reshape(-1, 1, 1, 1)
        return sigma * x_in / jnp.sqrt(1 + sigma**2)

    loss_fn = build_loss(config, _Fake(exact))
    d, n = 16, 20000
    batch = {
        "image": jax.random.normal(jax.random.PRNGKey(1), (n, 4, 4, 1)),
        "label": jnp.zeros((n,), jnp.int32),
    }
    loss, _ = jax.jit(lambda b: loss_fn(None, jax.random.PRNGKey(2), b))(batch)
    sigmas = np.asarray(ncsn_sigmas(config), np.float64)
    expected = 0.5 * d * np.mean(1 / (1 + sigmas**2))
    # Monte Carlo over 20000 samples: the per-sample loss has std ~ 0.5 * sqrt(2 D) / (1+s^2)
    assert abs(float(loss) - expected) < 0.05 * expected, (float(loss), expected)


def test_vpsde_loss_at_the_exact_score_of_gaussian_data_matches_the_closed_form():
    # x0 ~ N(0, I) stays N(0, I) under VP, score -x; the loss is 0.5 D E_t[alpha(t)^2].
    config = _config("vpsde", **{"diffusion.cond_drop": 0.0})
    sde = build_sde(config)

    def exact(x_in, t_in):
        _, std = sde.mean_coef_std(t_in / 999.0)
        return std.reshape(-1, 1, 1, 1) * x_in  # c_in = 1 under VP

    loss_fn = build_loss(config, _Fake(exact))
    d, n = 16, 20000
    batch = {
        "image": jax.random.normal(jax.random.PRNGKey(1), (n, 4, 4, 1)),
        "label": jnp.zeros((n,), jnp.int32),
    }
    loss, _ = jax.jit(lambda b: loss_fn(None, jax.random.PRNGKey(3), b))(batch)
    t = np.linspace(config.diffusion.eps_t, 1.0, 100001)
    expected = 0.5 * d * np.mean(np.asarray(sde.mean_coef_std(jnp.asarray(t))[0], np.float64) ** 2)
    assert abs(float(loss) - expected) < 0.05 * expected, (float(loss), expected)


def test_mismatched_objective_and_sampler_are_user_errors():
    with pytest.raises(UserError, match="objective"):
        build_loss(_config("sliced"), None)
    # Every sampler applies to every image objective; a toy objective of one noise level
    # takes langevin only, and says why.
    build_loss(_config("vesde", **{"sample.sampler": "ddim"}), None)
    with pytest.raises(UserError, match="does not apply.*one noise level"):
        samplers.check_sampler(objectives.REGISTRY["dsm"], "ddim")
    with pytest.raises(UserError, match="is not known"):
        build_loss(_config("vesde", **{"sample.sampler": "rk45"}), None)
    with pytest.raises(UserError, match="energy"):
        build_loss(_config("ddpm", **{"diffusion.parameterization": "energy"}), None)


# The energy parameterisation on NCSN: its samplers differentiate the network, and the SDE's
# probability-flow bits/dim (compare's, below) would differentiate that again.
_RUNS = {"ncsn": ("energy", ["als"]), "vpsde": ("score", ["pc", "em", "ode"])}
_DDPM = {"ddpm": ("score", ["ddim"])}  # for compare's variational bound (T = 20)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny NCSN (energy), VP SDE (score) and DDPM (T = 20) runs trained through the loop."""
    root = tmp_path_factory.mktemp("objectives")
    data_dir, workdirs = str(root / "tfds"), {}
    for objective, (parameterization, names) in {**_RUNS, **_DDPM}.items():
        over = {
            "diffusion.objective": objective,
            "diffusion.parameterization": parameterization,
            "diffusion.num_scales": 3,
            "sample.sampler": names[0],
            "sample.steps_per_sigma": 2,
            "diffusion.timesteps": 20,
        }
        workdirs[objective] = str(root / objective)
        assert run(tiny_config(data_dir, **over), workdirs[objective])
    return workdirs


@pytest.mark.parametrize("objective", sorted(_RUNS))
def test_every_sampler_of_the_objective_is_deterministic_given_a_key(runs, objective):
    loaded = api.load(runs[objective])
    labels = np.array([0, 3])
    for sampler in _RUNS[objective][1]:
        go = api.make_generator(loaded, labels, sampler=sampler, steps=2, guidance=2.0)
        x = np.asarray(go(jax.random.PRNGKey(1)))
        assert x.shape == (2, 8, 8, 1) and np.isfinite(x).all()
        np.testing.assert_array_equal(x, go(jax.random.PRNGKey(1)))
        assert np.abs(x - go(jax.random.PRNGKey(2))).max() > 1e-3


def test_compare_matches_the_budget_and_reports_bits_per_dim(runs, tmp_path):
    from jldm import compare

    rows = [compare.compare_one(runs[o], 24, 1, 2.0, 0, 4, bpd_steps=2) for o in sorted(runs)]
    ddpm, ncsn, vp = rows
    # ncsn: 5 levels x 2 Langevin steps + the denoising step, doubled by guidance = 22 <= 24
    assert (ncsn["sampler"], ncsn["nfe"], ncsn["bits_per_dim"]) == ("als", 22, None)
    # vpsde pc: 12 evaluations per image -> 5 steps of predictor + corrector and the final
    # denoising step
    assert (vp["sampler"], vp["steps"], vp["nfe"]) == ("pc", 5, 22)
    # an untrained tiny model on a 2-step ODE: only finiteness and sign are meaningful
    assert 0 < vp["bits_per_dim"] < np.inf and vp["bpd_images"] == 4 and vp["bpd_nfe"] == 8
    assert vp["bpd_method"] == "ode"
    # ddpm: ddim at 12 steps (x2 guidance); its variational bound sums all T = 20 terms (a
    # model of 4 training steps: only finiteness and a loose range are meaningful).
    assert (ddpm["sampler"], ddpm["steps"], ddpm["nfe"]) == ("ddim", 12, 24)
    assert (ddpm["bpd_method"], ddpm["bpd_nfe"], ddpm["bpd_images"]) == ("vlb all terms", 20, 4)
    assert 1 < ddpm["bits_per_dim"] < np.inf
    assert all(r["train_steps_s"] > 0 and r["stage1_steps_s"] is None for r in rows)
    for r in rows:
        assert 0 <= r["class_accuracy"] <= 1 and r["frechet"] > 0
    table = compare.markdown(rows)
    assert table.count("\n") == 4 and "| ncsn |" in table and "| - |" in table


def test_compare_grid_runs_each_sampler_per_budget_and_plots_it(runs, tmp_path, capsys):
    import json

    from PIL import Image

    from jldm.cli import run_cli
    from jldm.eval import plot
    from jldm.scripts import compare as script

    out = str(tmp_path / "grid")
    # ddpm and ncsn (a discrete model and a score ladder) give the grid its shape; the vpsde
    # run's ODE bits/dim are tested above.
    argv = ["compare", runs["ddpm"], runs["ncsn"], "--grid", "--budgets=10,50"]
    argv += ["--samplers=als,ddim", "--per_class=1", "--guidance=2", "--bpd_images=4"]
    argv += ["--bpd_terms=5", f"--out={out}"]
    assert run_cli(script.main, argv, flag_values=script.FLAGS, positional=True) == 0
    rows = [json.loads(line) for line in open(out + ".jsonl")]
    grid = [
        (r["objective"], r["sampler"], r["steps"], r["nfe"])
        for r in rows
        if r["table"] == "grid" and r["run"] != "real"
    ]
    # Every sampler on both objectives. Budgets halve under guidance 2: ddim 5 steps, and 25
    # (bounded by T = 20 on ddpm); als 2 and 12 levels of 2 Langevin steps plus the denoising
    # step.
    assert grid == [
        ("ddpm", "ddim", 5, 10), ("ddpm", "ddim", 20, 40),
        ("ddpm", "als", 2, 10), ("ddpm", "als", 12, 50),
        ("ncsn", "ddim", 5, 10), ("ncsn", "ddim", 25, 50),
        ("ncsn", "als", 2, 10), ("ncsn", "als", 12, 50),
    ]  # fmt: skip
    real = next(r for r in rows if r["run"] == "real")
    assert real["sampler"] == "train split" and 0 <= real["frechet"] and 0 <= real["recall"] <= 1
    bpd = {r["objective"]: r for r in rows if r["table"] == "bits_per_dim"}
    assert bpd["ncsn"]["bits_per_dim"] is None
    assert (bpd["ddpm"]["bpd_method"], bpd["ddpm"]["bpd_nfe"]) == ("vlb 5 terms", 5)
    assert 1 < bpd["ddpm"]["bits_per_dim"] < np.inf
    text = open(out + ".md").read()
    assert text.count("| run | objective |") == 2 and "| real | digits | train split |" in text
    assert Image.open(out + ".png").format == "PNG"
    assert open(out + ".pdf", "rb").read().startswith(b"%PDF-")
    # the figure of these rows: one line per objective/sampler and the dashed reference
    figure = plot.nfe_figure([r for r in rows if r["table"] == "grid" and r["run"] != "real"], real)
    texts = [t.get_text() for t in figure.legends[0].get_texts()]
    assert texts == ["ddpm/ddim", "ddpm/als", "ncsn/ddim", "ncsn/als", "real images (train split)"]
    assert f"plot: {out}.png {out}.pdf" in capsys.readouterr().out


def test_network_output_names_what_each_objective_predicts():
    want = {
        ("ddpm", "diffusion.prediction", "v"): "v",
        ("vpsde", "diffusion.parameterization", "energy"): "energy",
        ("vesde", "diffusion.parameterization", "score"): "score",
        ("edm", None, None): "denoiser",
        ("flow", None, None): "velocity",
    }
    for (objective, key, value), name in want.items():
        config = _config(objective, **({key: value} if key else {}))
        assert objectives.network_output(config) == name, objective
