"""Run kinds: every bundled config is told apart by jldm.runs.kinds alone."""

import importlib
import pathlib

import pytest

from jldm.build.model import is_latent
from jldm.build.vae import is_vae
from jldm.runs.kinds import KINDS, kind_of

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "jldm" / "configs"


def _expected(name: str) -> str:
    if name.startswith("toy_"):
        return "toy"
    return {"ldm": "latent", "vae": "vae"}.get(name.rsplit("_", 1)[-1], "pixel")


@pytest.mark.parametrize(
    "name", sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem != "__init__")
)
def test_each_bundled_config_has_its_kind(name):
    config = importlib.import_module(f"jldm.configs.{name}").get_config()
    kind = kind_of(config)
    assert kind == _expected(name) and kind in KINDS
    # The build predicates answer from the same place.
    assert is_latent(config) == (kind == "latent") and is_vae(config) == (kind == "vae")


def test_the_kind_follows_the_config_sections():
    config = importlib.import_module("jldm.configs.digits_ddpm").get_config()
    assert kind_of(config) == "pixel"
    config.stage1 = importlib.import_module("jldm.configs.digits_ldm").get_config().stage1
    assert kind_of(config) == "latent"
    config.data.name = "toy_ring"  # a toy density whatever else the config carries
    assert kind_of(config) == "toy"
