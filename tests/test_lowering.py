"""What jldm runs on an accelerator lowers for CUDA and TPU on this CPU-only machine.

jax.export lowers for both platforms at once (jax.lax.platform_dependent keeps their branches
only) and refuses custom calls without a stable form, so a primitive, custom call or dtype that
an accelerator backend cannot take fails here. The programs: the training loop's train step,
one UNet evaluation, every registered sampler through the sampling pipeline, and the
likelihood ODE of bits_per_dim. Params, optimizer state and inputs are ShapeDtypeStructs
(jax.eval_shape), so nothing is allocated, not even the SD-1.5 shape's 860 M parameters.

Tracing is what costs (CPU seconds here: about 0.6 per sampler, 6 per likelihood ODE, 8 for
the SD-1.5 shape's UNet evaluation, 8 for CIFAR-10's train step and 21 for SD-1.5's), so each
matrix keeps what adds coverage:
- UNet evaluation: digits in float32 and bfloat16, CIFAR-10 and SD-1.5 in their bfloat16;
- train step: the digits config in bfloat16 with dropout (CIFAR-10's setting) and two fused
  steps (the lax.scan of train.steps_per_call); SD-1.5's is compiled by bench/memory_plan.py;
- samplers: every one, bfloat16, on the digits config with one UNet level: the network's
  output is float32 in either compute dtype (test_unet_evaluation_lowers), so a sampler's own
  code sees the same types either way, and the depth adds network traces, not sampler code;
  plus CIFAR-10's own sampler (ddim) at its full width;
- likelihood ODE: vpsde's probability flow in bfloat16 on that one-level digits network (EDM's
  and flow matching's flows differ only in their drift, and go through the same solver).
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jldm.build import build_model, build_schedule, make_optimizer, unet_state_shapes
from jldm.build import samplers as registry
from jldm.build.model import init_params
from jldm.build.objectives import build_loss
from jldm.configs import cifar10_ddpm, digits_ddpm, sd15_shape
from jldm.runs.load import Loaded
from jldm.sampling import likelihood, pipeline
from jldm.train.sharding import batch_sharding, make_mesh, state_sharding
from jldm.train.step import make_train_step, make_update

PLATFORMS = ("cuda", "tpu")
CONFIGS = {"digits": digits_ddpm, "cifar10": cifar10_ddpm, "sd15": sd15_shape}
ONE_LEVEL = {"model.channel_mult": (1,)}
# Custom-call targets that only XLA:CPU implements (LAPACK, the DUCC FFT, host callbacks).
CPU_ONLY = re.compile(r"^(lapack_|ducc_|cpu_|xla_python_cpu_callback|xla_ffi_python_cpu)")
# An accelerator program should compute its tables (masks, group indicators) on the device
# rather than carry them as literals; the largest legitimate one is a 1000-step schedule.
MAX_CONSTANT_BYTES = 1 << 20
_ELEMENT_BYTES = {"f64": 8, "i64": 8, "ui64": 8, "f32": 4, "i32": 4, "ui32": 4, "bf16": 2, "f16": 2}
_ELEMENT_BYTES.update({"i8": 1, "ui8": 1, "i1": 1})


class Setup:
    """A config (compute dtype and overrides applied), its model and its params' shapes."""

    def __init__(self, name: str, dtype: str, overrides: dict):
        self.config = c = CONFIGS[name].get_config()
        c.model.dtype = dtype
        for key, value in overrides.items():
            section, field = key.split(".")
            c[section][field] = value
        self.model = build_model(c)
        self.params = jax.eval_shape(
            lambda k: init_params(self.model, c, k), jax.random.PRNGKey(c.seed)
        )

    def run(self) -> Loaded:
        """The config as a loaded run whose params are ShapeDtypeStructs."""
        return Loaded(self.config, self.model, self.params, build_schedule(self.config), 0)


@pytest.fixture(scope="module")
def setup():
    """setup(name, dtype, **overrides) -> Setup, each built once per module."""
    built = {}

    def get(name: str, dtype: str, **overrides) -> Setup:
        key = (name, dtype, tuple(sorted(overrides.items())))
        if key not in built:
            built[key] = Setup(name, dtype, overrides)
        return built[key]

    return get


def _literal_constants(text: str) -> list[tuple[str, int]]:
    """(type, bytes) of each non-splat literal array in a StableHLO module's text."""
    found = []
    pattern = r'constant dense<"0x[0-9A-Fa-f]+"> : tensor<((?:\d+x)*)(\w+)>'
    for dims, element in re.findall(pattern, text):
        n = int(np.prod([int(d) for d in dims.split("x") if d], dtype=np.int64))
        found.append((f"{dims}{element}", n * _ELEMENT_BYTES.get(element, 8)))
    return found


def export(fn, *args) -> tuple[jax.export.Exported, str]:
    """fn (jitted) exported for CUDA and TPU, and its StableHLO text, checked for what they
    cannot run (CPU-only custom calls) or should not carry (big literal tables)."""
    exp = jax.export.export(fn, platforms=PLATFORMS)(*args)
    assert exp.platforms == PLATFORMS
    text = exp.mlir_module()
    targets = set(re.findall(r"stablehlo\.custom_call @([\w.$-]+)", text))
    targets |= set(re.findall(r'call_target_name = "([^"]+)"', text))
    assert not [t for t in targets if CPU_ONLY.match(t)], targets
    big = [t for t, size in _literal_constants(text) if size > MAX_CONSTANT_BYTES]
    assert not big, f"literal arrays over {MAX_CONSTANT_BYTES} bytes: {big}"
    return exp, text


def _avals(tree) -> list[tuple[tuple[int, ...], np.dtype]]:
    return [(tuple(a.shape), np.dtype(a.dtype)) for a in jax.tree_util.tree_leaves(tree)]


def _conv_dtypes(text: str) -> set[str]:
    """Element types of the results of a StableHLO module's convolutions."""
    return set(re.findall(r"stablehlo\.convolution\(.*-> tensor<[\dx]+x(\w+)>", text))


def test_the_module_checks_catch_big_tables_and_cpu_only_calls():
    """export's checks fail on a 2 MiB literal table; the CPU-only pattern takes LAPACK's
    targets, not cuSOLVER's; literal sizes count the element type's bytes."""
    table = np.arange(512 * 1024, dtype=np.float32)
    with pytest.raises(AssertionError, match="literal arrays"):
        export(jax.jit(lambda x: x + table), jax.ShapeDtypeStruct(table.shape, jnp.float32))
    assert CPU_ONLY.match("lapack_sgetrf_ffi") and not CPU_ONLY.match("cusolver_getrf_ffi")
    assert _literal_constants('%c = stablehlo.constant dense<"0x0000803F"> : tensor<2x3xbf16>') == [
        ("2x3xbf16", 12)
    ]


@pytest.mark.parametrize(
    "name,dtype", [("digits", "float32"), ("digits", "bfloat16"), ("cifar10", "bfloat16"),
                   ("sd15", "bfloat16")],
)  # fmt: skip
def test_unet_evaluation_lowers(setup, name, dtype):
    """One UNet evaluation (a sampling step's cost): float32 [B, H, W, C] out whatever the
    compute dtype, the convolutions in the compute dtype."""
    s = setup(name, dtype)
    c, batch = s.config, 4
    res, ch = c.data.resolution, c.data.channels
    fn = jax.jit(lambda p, x, t, y: s.model.apply({"params": p}, x, t, y))
    exp, text = export(
        fn,
        s.params,
        jax.ShapeDtypeStruct((batch, res, res, ch), jnp.float32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
        jax.ShapeDtypeStruct((batch,), jnp.int32),
    )
    assert _avals(exp.out_avals) == [((batch, res, res, ch), np.dtype(np.float32))]
    assert _conv_dtypes(text) == {"bf16" if dtype == "bfloat16" else "f32"}


def test_train_step_lowers_and_returns_the_state_as_it_came(setup):
    """The loop's step (loss, backward, clip, AdamW, EMA; data parallel over the test
    devices), two fused steps: the new state has the shapes, dtypes and shardings of the state
    it was given, as donation and the next call need; one metric per fused step; every
    convolution, forward and backward, in bfloat16."""
    s = setup("digits", "bfloat16", **{"model.dropout": 0.1})
    c, mesh, k = s.config, make_mesh(), 2
    batch = 2 * mesh.devices.size
    tx = make_optimizer(c.train)
    shapes = unet_state_shapes(c, s.model)
    shardings = state_sharding(shapes, mesh, False)
    update = make_update(build_loss(c, s.model), tx, c.train.ema_decay, False, shardings.params)
    step = make_train_step(update, mesh, shardings)
    state = jax.tree_util.tree_map(
        lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh), shapes, shardings
    )
    res, ch = c.data.resolution, c.data.channels
    split = batch_sharding(mesh, batch_axis=1)
    batches = {
        "image": jax.ShapeDtypeStruct((k, batch, res, res, ch), jnp.float32, sharding=split),
        "label": jax.ShapeDtypeStruct((k, batch), jnp.int32, sharding=split),
    }
    exp, text = export(step, state, batches)

    assert exp.nr_devices == mesh.devices.size
    n = len(jax.tree_util.tree_leaves(state))
    assert _avals(exp.out_avals[:n]) == _avals(state)
    assert exp.out_shardings_hlo[:n] == exp.in_shardings_hlo[:n]
    metrics = exp.out_tree.unflatten(exp.out_avals)[1]
    assert {"loss", "grad_norm", "nonfinite"} <= set(metrics)
    assert set(_avals(metrics)) == {((k,), np.dtype(np.float32))}
    assert _conv_dtypes(text) == {"bf16"}
    assert "stablehlo.while" in text


def _sampler_images(s: Setup, sampler: str, n: int = 4) -> str:
    """The sampling pipeline's program for sampler: n class-conditional images, guided."""
    labels = np.arange(n) % s.config.data.num_classes
    go = pipeline.make_generator(s.run(), labels, sampler=sampler, steps=3, guidance=2.0)
    exp, text = export(go.fn, *go.args(jax.ShapeDtypeStruct((2,), jnp.uint32)))
    res, ch = s.config.data.resolution, s.config.data.channels
    assert _avals(exp.out_avals) == [((n, res, res, ch), np.dtype(np.float32))]
    return text


@pytest.mark.parametrize("sampler", sorted(registry.REGISTRY))
def test_every_sampler_lowers(setup, sampler):
    """Each registered sampler's program (classifier-free guidance doubles the batch inside):
    float32 images [N, H, W, C] out, its steps in one loop."""
    text = _sampler_images(setup("digits", "bfloat16", **ONE_LEVEL), sampler)
    assert "stablehlo.while" in text


def test_a_sampler_at_cifar10_width_carries_no_cpu_tables(setup):
    """CIFAR-10's own sampler (ddim) with its full UNet: no literal table over 1 MiB (a table
    built by numpy in the CPU branch of a layer would be hoisted out of the sampler's loop into
    every platform's program)."""
    _sampler_images(setup("cifar10", "bfloat16"), "ddim")


def test_likelihood_ode_lowers(setup):
    """bits_per_dim's program for an ODE objective (vpsde's probability flow, adaptive
    Dormand-Prince, Hutchinson probe): float32 bits/dim, int evaluations and a done flag per
    image, in one while loop."""
    s = setup("digits", "bfloat16", **ONE_LEVEL, **{"diffusion.objective": "vpsde"})
    c, n = s.config, 4
    assert likelihood.method(c) == "ode"
    chunk = likelihood._ode_chunk(s.run(), tol=1e-5, steps=None, max_steps=100)
    res, ch = c.data.resolution, c.data.channels
    exp, text = export(
        chunk,
        s.params,
        jax.ShapeDtypeStruct((2,), jnp.uint32),
        jax.ShapeDtypeStruct((n,), jnp.int32),
        jax.ShapeDtypeStruct((n, res, res, ch), jnp.uint8),
        jax.ShapeDtypeStruct((n,), jnp.int32),
    )
    bpd, nfe, done = exp.out_avals
    assert (bpd.shape, bpd.dtype) == ((n,), jnp.float32)
    assert nfe.shape == (n,) and jnp.issubdtype(nfe.dtype, jnp.integer)
    assert (done.shape, done.dtype) == ((n,), jnp.bool_)
    assert "stablehlo.while" in text
