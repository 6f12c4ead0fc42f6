"""Files written together land together, and a writer killed mid-write leaves nothing for good:
jldm.temporaries with jldm.data.paths.write_atomic, on a local folder and a fake gs://."""

import errno
import os
import signal

import numpy as np
import pytest

from jldm.convert import pipeline
from jldm.data import paths
from jldm.temporaries import _host, together
from tests import fake_cloud


def _failing(data: bytes):
    def write(f):
        f.write(data)
        raise OSError(errno.ENOSPC, "No space left on device")

    return write


def _files(folder) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_a_failed_second_write_leaves_both_files_as_they_were(tmp_path):
    (tmp_path / "s.png").write_bytes(b"old grid")
    (tmp_path / "s.npz").write_bytes(b"old samples")
    with pytest.raises(OSError) as e, together():
        paths.write_bytes_atomic(str(tmp_path / "s.png"), b"new grid")
        paths.write_atomic(str(tmp_path / "s.npz"), _failing(b"half the new"))
    assert e.value.filename == str(tmp_path / "s.npz")
    assert _files(tmp_path) == {"s.png": b"old grid", "s.npz": b"old samples"}


@pytest.mark.parametrize("first_existed", [True, False])
def test_a_failed_second_rename_puts_the_first_file_back(tmp_path, monkeypatch, first_existed):
    if first_existed:
        (tmp_path / "s.png").write_bytes(b"old grid")
    (tmp_path / "s.npz").write_bytes(b"old samples")
    before = _files(tmp_path)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the npz's rename, after the grid's
            raise OSError(errno.EIO, "Input/output error")
        return real(src, dst)

    with pytest.raises(OSError) as e:
        with together():
            paths.write_bytes_atomic(str(tmp_path / "s.png"), b"new grid")
            paths.write_bytes_atomic(str(tmp_path / "s.npz"), b"new samples")
            monkeypatch.setattr(os, "replace", replace)
    assert e.value.filename == str(tmp_path / "s.npz")
    monkeypatch.undo()
    assert _files(tmp_path) == before  # and no temporary or second name left


def test_a_folder_at_the_second_path_leaves_the_first_as_it_was(tmp_path):
    (tmp_path / "s.png").write_bytes(b"old grid")
    (tmp_path / "s.npz").mkdir()
    with pytest.raises(IsADirectoryError) as e, together():
        paths.write_bytes_atomic(str(tmp_path / "s.png"), b"new grid")
        paths.write_bytes_atomic(str(tmp_path / "s.npz"), b"new samples")
    assert e.value.filename == str(tmp_path / "s.npz")
    assert sorted(os.listdir(tmp_path)) == ["s.npz", "s.png"]
    assert (tmp_path / "s.png").read_bytes() == b"old grid"


def test_files_written_together_appear_only_at_the_end_of_the_block(tmp_path):
    (tmp_path / "s.png").write_bytes(b"old grid")
    with together():
        paths.write_bytes_atomic(str(tmp_path / "s.png"), b"new grid")
        paths.write_bytes_atomic(str(tmp_path / "s.npz"), b"new samples")
        assert (tmp_path / "s.png").read_bytes() == b"old grid"
        assert not (tmp_path / "s.npz").exists()
    assert _files(tmp_path) == {"s.png": b"new grid", "s.npz": b"new samples"}


@pytest.fixture
def cloud(monkeypatch, tmp_path):
    yield from fake_cloud.install(monkeypatch, tmp_path)


def test_cloud_files_written_together_are_uploaded_both_or_neither(cloud):
    paths.write_bytes_atomic("gs://b/s.png", b"old grid")
    with pytest.raises(OSError), together():
        paths.write_bytes_atomic("gs://b/s.png", b"new grid")
        paths.write_atomic("gs://b/s.npz", _failing(b"half"))
    assert paths.read_bytes("gs://b/s.png") == b"old grid"
    assert not paths.exists("gs://b/s.npz")
    with together():
        paths.write_bytes_atomic("gs://b/s.png", b"new grid")
        paths.write_bytes_atomic("gs://b/s.npz", b"new samples")
    assert paths.read_bytes("gs://b/s.png") == b"new grid"
    assert paths.read_bytes("gs://b/s.npz") == b"new samples"


def _killed_mid_write(path: str) -> int:
    """The pid of a process that died of SIGKILL inside write_atomic(path), half written."""

    def write(f):
        f.write(b"half")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    pid = os.fork()
    if pid == 0:
        try:
            paths.write_atomic(path, write)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return pid


def test_the_temporary_of_a_writer_killed_mid_write_goes_with_the_next_write(tmp_path):
    out = tmp_path / "s.png"
    out.write_bytes(b"old grid")
    dead, host = _killed_mid_write(str(out)), _host()
    (left,) = [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert (tmp_path / left).read_bytes() == b"half" and out.read_bytes() == b"old grid"
    elsewhere = "000000" if host != "000000" else "111111"
    kept = [
        f".tmp-{os.getppid()}-{host}-0123abcd-s.png",  # a live process's, writing now
        f".tmp-{dead}-{elsewhere}-0123abcd-s.png",  # another machine's (a shared folder)
        f".tmp-{dead}-{host}-0123abcd-t.png",  # another file's: its own next write clears it
        f".tmp-{dead}-{host}-0123abcd-s.png.npz",
    ]
    for name in kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / f".tmp-{dead}-{host}-89abcdef-s.png").mkdir()  # a folder of a killed writer
    paths.write_bytes_atomic(str(out), b"new grid")
    assert sorted(os.listdir(tmp_path)) == sorted(["s.png", *kept])
    assert out.read_bytes() == b"new grid"


def test_the_folder_of_a_conversion_killed_mid_write_goes_with_the_next_cache(tmp_path):
    cache = tmp_path / "sd-cache"
    stale = tmp_path / f".tmp-{_killed_mid_write(str(cache))}-{_host()}-0123abcd-sd-cache"
    (stale / "params").mkdir(parents=True)
    (stale / "params" / "part").write_bytes(b"half a checkpoint")
    assert pipeline._save_cache(str(cache), {"w": np.arange(3.0)}, {"format": 1})
    assert sorted(os.listdir(tmp_path)) == ["sd-cache"]
    assert pipeline._read_marker(str(cache)) == {"format": 1}
