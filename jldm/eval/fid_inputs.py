"""The sets FID reads, checked through before any Inception pass.

A set is an .npz file or a folder of .npz shards holding images [N,H,W,C] (uint8, or floats in
[0, 1]; C = 1 or 3) or statistics (`mu` [F], `sigma` [F, F]). check_set opens every file of a
set: a truncated or damaged shard, a missing array, a wrong shape, a NaN or Inf pixel or
statistic, a float pixel outside [0, 1] are each one UserError naming the file, found before
the work instead of after the shards before it. uint8 images are checked from the .npy headers
alone (any byte is a valid pixel); float images and statistics are read and scanned.
"""

import io
import zipfile
import zlib

import numpy as np

from jldm.data.paths import is_local, isdir, isfile, join, listdir, read_bytes
from jldm.errors import UserError
from jldm.nn.inception import FEATURES

# What reading a damaged .npz raises: a cut-off file has no zip directory (BadZipFile), a
# damaged member fails to inflate (zlib.error) or ends early (EOFError, ValueError).
UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def opened(path: str):
    """path as np.load and zipfile take it: the local path, or a cloud object's bytes."""
    return path if is_local(path) else io.BytesIO(read_bytes(path))


def unreadable(path: str, e: BaseException) -> UserError:
    """The one-line error of an .npz that cannot be read."""
    reason = (str(e).strip().splitlines() or [""])[0]
    return UserError(
        f"{path} cannot be read as .npz ({type(e).__name__}: {reason}): it is damaged or was "
        "cut short; write it again, or move it out of the set"
    )


def headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """{array name: (shape, dtype)} of an .npz, from the arrays' headers (no data is read)."""
    fmt = np.lib.format
    try:
        with zipfile.ZipFile(opened(path)) as zf:
            out = {}
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = fmt.read_magic(f)
                    read = fmt.read_array_header_1_0 if version == (1, 0) else None
                    shape, _, dtype = (read or fmt.read_array_header_2_0)(f)
                out[info.filename[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
            return out
    except UNREADABLE as e:
        raise unreadable(path, e) from None


def image_key(path: str, names: list[str]) -> str:
    """The array of images in an .npz with arrays names: `images`, or its only array."""
    key = "images" if "images" in names else (names[0] if len(names) == 1 else None)
    if key is None:
        raise UserError(
            f"{path} has arrays {names} but no `images` (or `mu` and `sigma`): "
            "name the image array `images`"
        )
    return key


def check_image_shape(shape: tuple, name: str) -> None:
    """FID takes images [N, H, W, 1 or 3]."""
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise UserError(f"{name} has shape {tuple(shape)}: FID needs images [N, H, W, 1 or 3]")


def check_pixels(x: np.ndarray, name: str) -> None:
    """Float (or integer) images x must be finite and lie in [0, 1] (rounding allowed)."""
    if x.dtype == np.uint8 or not x.size:
        return
    finite = np.isfinite(x)
    if not finite.all():
        bad = np.flatnonzero(~finite.reshape(len(x), -1).all(axis=1))
        raise UserError(
            f"{name} holds NaN or Inf pixels in {len(bad)} of {len(x)} images (the first is "
            f"image {bad[0]}): pass finite images, e.g. sample them again"
        )
    lo, hi = float(x.min()), float(x.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise UserError(f"{name} ranges over [{lo:.3g}, {hi:.3g}]: pass floats in [0, 1] or uint8")


def check_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    """Inception statistics: mu [F] and sigma [F, F], every value finite."""
    if mu.shape != (FEATURES,) or sigma.shape != (FEATURES, FEATURES):
        raise UserError(
            f"{name}: mu {mu.shape} / sigma {sigma.shape} are not Inception pool "
            f"statistics ([{FEATURES}] and [{FEATURES}, {FEATURES}])"
        )
    for what, a in (("mu", mu), ("sigma", sigma)):
        if not np.isfinite(a).all():
            raise UserError(
                f"{name}: {what} holds {int((~np.isfinite(a)).sum())} NaN or Inf values: "
                "compute the statistics again (--save_stats) from finite images"
            )


def _check_file(path: str, in_folder: bool) -> int:
    """The images in one .npz (0 for statistics), checked as the module docstring says."""
    if not isfile(path):
        raise UserError(f"{path} not found: pass an .npz of images or of mu/sigma statistics")
    arrays = headers(path)
    if "mu" in arrays and "sigma" in arrays:
        if in_folder:
            raise UserError(f"{path} holds statistics: a folder must hold image shards")
        mu, sigma = read_arrays(path, ("mu", "sigma"))
        check_stats(mu, sigma, path)
        return 0
    key = image_key(path, list(arrays))
    shape, dtype = arrays[key]
    check_image_shape(shape, path)
    if dtype != np.uint8:
        if dtype.kind not in "biuf":
            raise UserError(f"{path}: images of dtype {dtype}: pass uint8, or floats in [0, 1]")
        check_pixels(read_arrays(path, (key,))[0], path)
    return int(shape[0])


def read_arrays(path: str, keys: tuple[str, ...]) -> list[np.ndarray]:
    """The arrays keys of an .npz; a damaged one is a UserError."""
    try:
        with np.load(opened(path)) as z:
            return [z[k] for k in keys]
    except UNREADABLE as e:
        raise unreadable(path, e) from None


def shards(folder: str) -> list[str]:
    """The .npz files of a folder of sample shards, in name order."""
    names = sorted(n for n in listdir(folder) if n.endswith(".npz") and not n.startswith("."))
    if not names:
        raise UserError(f"{folder} holds no .npz files: pass a folder of sample shards")
    return [join(folder, n) for n in names]


def check_set(path: str) -> int:
    """Check the set at path (an .npz or a folder of shards) through; -> its number of images
    (0: stored statistics). A set of images needs at least 2 of them (a covariance)."""
    if isdir(path):
        count = sum(_check_file(shard, in_folder=True) for shard in shards(path))
    else:
        count = _check_file(path, in_folder=False)
        if count == 0:
            return 0
    if count < 2:
        raise UserError(
            f"{path} holds {count} image(s): FID's covariance needs at least 2; generate more"
        )
    return count


def finite(mu: np.ndarray, sigma: np.ndarray) -> bool:
    """Whether statistics mu [F] and sigma [F, F] hold finite values only."""
    return bool(np.isfinite(mu).all() and np.isfinite(sigma).all())


def check_computed(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    """Statistics computed from checked (finite) images must be finite: else the Inception
    weights are at fault, and nothing made of them is printed or written."""
    if not finite(mu, sigma):
        raise UserError(
            f"the Inception features of {name} are not finite: the --weights file is damaged "
            "or not FID Inception weights"
        )
