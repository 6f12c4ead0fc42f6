"""Read a PyTorch `torch.save` checkpoint of tensors into numpy arrays, without torch.

Both layouts torch.save has written are read: the zip archive (PyTorch >= 1.6) and the older
stream of pickles followed by raw storages. Only tensors, dicts, lists, tuples and numbers are
rebuilt; any other class in the pickle is refused, so no code from the file is ever run.
"""

import collections
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from jldm.errors import UserError

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _Storage:
    """A storage whose bytes may arrive after the pickle that refers to it (legacy layout)."""

    def __init__(self, dtype: np.dtype, data: np.ndarray | None = None):
        self.dtype, self.data = dtype, data


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def materialize(self) -> np.ndarray:
        flat = self.storage.data
        if not self.size:
            return np.array(flat[self.offset])
        item = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :], shape=self.size, strides=[s * item for s in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage, offset, size, stride, *_):
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_):
    return data


class _Unpickler(pickle.Unpickler):
    def __init__(self, f, load_storage):
        super().__init__(f)
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"{module}.{name} is not a tensor type this reader accepts")

    def persistent_load(self, pid):
        return self._load_storage(pid)


def _materialize(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {k: _materialize(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("/data.pkl")), None)
        if pkl is None:
            raise UserError(f"{path} is a zip file but not a torch.save checkpoint")
        prefix = pkl[: -len("data.pkl")]

        def load_storage(pid):
            _, storage_type, key, _location, _numel = pid[:5]
            raw = zf.read(f"{prefix}data/{key}")
            return _Storage(storage_type.dtype, np.frombuffer(raw, storage_type.dtype))

        with zf.open(pkl) as f:
            return _materialize(_Unpickler(f, load_storage).load())


def _load_legacy(path: str) -> Any:
    storages: dict[str, _Storage] = {}

    def load_storage(pid):
        _, storage_type, key, _location, _numel, view = pid
        if view is not None:
            raise UserError(f"{path} uses storage views, which this reader does not support")
        return storages.setdefault(key, _Storage(storage_type.dtype))

    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise UserError(f"{path} is not a torch.save checkpoint")
        pickle.load(f)  # protocol version
        pickle.load(f)  # sys info
        obj = _Unpickler(f, load_storage).load()
        for key in pickle.load(f):
            st = storages[key]
            numel = int.from_bytes(f.read(8), "little")
            st.data = np.frombuffer(f.read(numel * st.dtype.itemsize), st.dtype)
    return _materialize(obj)


def load_torch_file(path: str) -> Any:
    """The object torch.save wrote to path, with tensors as numpy arrays."""
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise UserError(f"{path} cannot be read as a PyTorch checkpoint ({e})") from None
