"""Sizes that cannot fit, refused before anything is allocated: a training batch, or the
samples one sampling call holds at once.

The bounds are from below (the arrays that must exist at the same time), so a refusal is
certain; passing the check does not promise that a program fits.
"""

import math
import os

import jax

from jldm.errors import UserError

GIB = 2**30


def host_bytes() -> int:
    """This machine's physical memory in bytes."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def device_bytes() -> tuple[int, str]:
    """(bytes one device can hold, its name): an accelerator's memory limit, or, on a CPU,
    the host's memory."""
    device = jax.local_devices()[0]
    stats = device.memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), f"one {device.device_kind}"
    return host_bytes(), "this machine"


def skip_bytes(unet: dict, n: int, height: int, width: int) -> int:
    """Bytes of the float32 activations a UNet keeps for its skip connections: n inputs of
    height x width, each level's num_res_blocks + 1 feature maps at its resolution."""
    channels, blocks = int(unet["channels"]), int(unet.get("num_res_blocks", 1))
    total = 0
    for level, mult in enumerate(unet["channel_mult"]):
        h, w = -(-height // 2**level), -(-width // 2**level)
        total += (blocks + 1) * channels * int(mult) * h * w
    return 4 * n * total


def _heads(unet: dict, level: int, channels: int) -> int:
    if unet.get("head_dim", 0) > 0:
        return channels // unet["head_dim"]
    heads = unet.get("num_heads", 1)
    return heads if isinstance(heads, int) else heads[level]


def attention_bytes(unet: dict, n: int, height: int, width: int) -> int:
    """Bytes of the largest self-attention score matrix a UNet forms for n inputs of height x
    width: heads x T^2 scores (T: the positions of a level with attention) of 2 bytes or more
    (jax.nn.dot_product_attention's XLA form holds them whole)."""
    levels = len(unet["channel_mult"])
    attended = set(unet.get("attention_levels", ()))
    if unet.get("mid_attention", True):
        attended.add(levels - 1)
    most = 0
    for level in attended:
        t = -(-height // 2**level) * -(-width // 2**level)
        heads = _heads(unet, level, int(unet["channels"]) * int(unet["channel_mult"][level]))
        most = max(most, heads * t * t)
    return 2 * n * most


def network_bytes(unet: dict, n: int, height: int, width: int) -> int:
    """A lower bound on the bytes a UNet's forward pass holds at once for n inputs: its skip
    activations (held by the middle block) or its largest attention scores, the larger."""
    return max(skip_bytes(unet, n, height, width), attention_bytes(unet, n, height, width))


def _gib(b: float) -> str:
    return f"{b / GIB:.1f} GiB"


def check_sampling_fits(
    unet: dict, n: int, height: int, width: int, guided: bool, what: str, fix: str
) -> None:
    """n inputs of height x width (where the UNet works) in one sampling call on one device
    (the UNet sees 2n with guidance) must leave room for the UNet's activations
    (network_bytes); what names the samples, fix says how to sample fewer."""
    need = network_bytes(unet, 2 * n if guided else n, height, width)
    have, where = device_bytes()
    if need > have:
        raise UserError(
            f"{what} at once need more than {_gib(need)} for the network's activations alone, "
            f"more than the {_gib(have)} of {where}: {fix}"
        )


def _float32_bytes(n: int, shape: tuple) -> int:
    """Bytes of n float32 arrays of shape (Python ints: no overflow)."""
    return 4 * n * math.prod(int(d) for d in shape)


def check_images_fit(n: int, shape: tuple, fix: str) -> None:
    """n float32 images of shape (H, W, C) must fit in this machine's memory."""
    size = _float32_bytes(n, shape)
    if size > host_bytes():
        raise UserError(
            f"{n} images of {shape} take {_gib(size)} as float32, more than this machine's "
            f"{_gib(host_bytes())}: {fix}"
        )


def check_batch_fits(
    section: str, batch: int, shape: tuple, unet: dict | None = None, steps_per_call: int = 1
) -> None:
    """A training batch of `batch` float32 inputs of `shape` (steps_per_call of them read at
    once) must fit in this process's share of the host's memory, and (unet given) each
    device's share of it the UNet's activations (network_bytes)."""
    size = _float32_bytes(steps_per_call * -(-batch // jax.process_count()), shape)
    if size > host_bytes():
        raise UserError(
            f"{section}.batch_size={batch} makes the inputs of one call {_gib(size)} "
            f"({shape} float32 each), more than this machine's {_gib(host_bytes())}: lower it"
        )
    if unet is not None:
        need = network_bytes(unet, -(-batch // jax.device_count()), shape[0], shape[1])
        have, where = device_bytes()
        if need > have:
            raise UserError(
                f"{section}.batch_size={batch} needs more than {_gib(need)} per device for the "
                f"network's activations alone, more than the {_gib(have)} of {where}: lower it"
            )
