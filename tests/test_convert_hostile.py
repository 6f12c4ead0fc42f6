"""Pretrained folders that fight back: cut-short or empty weight files, read-only folders,
head counts the UNet cannot split its channels into. Each ends in one line or just works."""

import os
import re
import shutil
import stat

import numpy as np
import pytest
from safetensors.numpy import save_file

pytest.importorskip("torch")
pytest.importorskip("diffusers")

import sample  # noqa: E402
from jldm.cli import run_cli  # noqa: E402
from jldm.convert.inception import read_state_dict  # noqa: E402
from jldm.convert.models import unet_from_config  # noqa: E402
from jldm.convert.pipeline import default_cache, load_pretrained  # noqa: E402
from jldm.errors import UserError  # noqa: E402
from tests.clitools import assert_error_line  # noqa: E402
from tests.sd_tiny import build_folder, unet_kwargs  # noqa: E402

UNET_FILE = os.path.join("unet", "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("sd1"))
    build_folder(root, "sd1", seed=3)
    return root


def _damaged(folder: str, tmp_path, how: str) -> str:
    """A copy of folder whose UNet weights are cut to their first half, or empty."""
    dst = str(tmp_path / "damaged")
    shutil.copytree(folder, dst)
    path = os.path.join(dst, UNET_FILE)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] if how == "truncated" else b"")
    return dst


@pytest.mark.parametrize("how", ["truncated", "empty"])
def test_damaged_weight_file_is_one_line_naming_it(folder, tmp_path, how):
    root = _damaged(folder, tmp_path, how)
    with pytest.raises(UserError) as e:
        load_pretrained(root, cache=False)
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(root, UNET_FILE) in msg, msg
    assert "truncated or empty" in msg and "re-download" in msg, msg


@pytest.mark.parametrize("name", ["fid.safetensors", "fid.npz"])
def test_damaged_inception_weights_are_one_line_naming_them(tmp_path, name):
    path, tensors = tmp_path / name, {"w": np.ones((64, 64), np.float32)}
    if name.endswith(".npz"):
        np.savez(path, **tensors)
    else:
        save_file(tensors, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match=re.escape(str(path))) as e:
        read_state_dict(str(path))
    assert "\n" not in str(e.value)


def test_sample_cli_on_a_truncated_folder_is_one_error_line(folder, tmp_path, capsys):
    root = _damaged(folder, tmp_path, "truncated")
    argv = ["sample.py", f"--pretrained={root}", "--prompt=x", f"--out={tmp_path}/s.png"]
    code = run_cli(sample.main, argv, flag_values=sample.FLAGS)
    assert_error_line(code, capsys.readouterr().err, UNET_FILE, "re-download")
    assert not os.path.exists(tmp_path / "s.png")


def _tree(root: str) -> dict:
    """Relative path -> (size, mtime) of everything under root."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def test_read_only_folder_converts_into_the_user_cache(folder, tmp_path):
    root = str(tmp_path / "read-only")
    shutil.copytree(folder, root)
    paths = [dirpath for dirpath, _, _ in os.walk(root)]
    before = _tree(root)
    for p in paths:
        os.chmod(p, stat.S_IRUSR | stat.S_IXUSR)
    try:
        assert load_pretrained(root).source == "converted"
        assert load_pretrained(root).source == "cache"
    finally:
        for p in paths:
            os.chmod(p, stat.S_IRWXU)
    assert _tree(root) == before
    cache = default_cache(root)
    assert os.path.dirname(os.path.dirname(cache)) == os.environ["JLDM_CACHE_DIR"]
    assert os.path.basename(cache).startswith("read-only-")
    assert os.path.isfile(os.path.join(cache, "jldm-cache.json"))
    # Another folder of the same name gets a cache of its own.
    assert default_cache(str(tmp_path / "elsewhere" / "read-only")) != cache


def test_head_counts_that_do_not_divide_the_channels_are_refused():
    cfg = dict(unet_kwargs("sd2"), attention_head_dim=(3, 4, 4))
    with pytest.raises(UserError, match=r"3 heads for 16 channels at level 0"):
        unet_from_config(cfg)
