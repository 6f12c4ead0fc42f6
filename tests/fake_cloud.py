"""A fake gs:// for tests: an in-memory fsspec filesystem behind etils.epath (the route epath
takes for gs:// without TensorFlow): an object store with no flock, no rename and no local
files, reached without network.

A test module makes it a fixture with

    @pytest.fixture
    def cloud(monkeypatch, tmp_path):
        yield from fake_cloud.install(monkeypatch, tmp_path)
"""

import importlib
from collections.abc import Iterator


def install(monkeypatch, tmp_path) -> Iterator[type]:
    """Put the fake gs:// (and gcs://) in place for one test and yield its filesystem class.

    The test runs in an empty local folder, where a cloud path turned local by mistake would
    land; the folder must still be empty when the test ends.
    """
    from etils.epath import backend, gpath
    from fsspec.implementations.memory import MemoryFileSystem

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store = {}
        pseudo_dirs = [""]

    registry = importlib.import_module("fsspec.registry")._registry
    for name in ("gs", "gcs"):
        monkeypatch.setitem(registry, name, FakeGCS)
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    backend.fsspec_backend._get_filesystem.cache_clear()
    local = tmp_path / "cwd"
    local.mkdir()
    monkeypatch.chdir(local)
    yield FakeGCS
    backend.fsspec_backend._get_filesystem.cache_clear()
    assert list(local.iterdir()) == []
