"""InceptionV3 as used for FID (the 2015-12-05 TensorFlow graph that pytorch-fid reproduces).

The FID variant differs from the torchvision classifier in its pooling: average pools that do not
count padding (Mixed_5*, Mixed_6b-e, Mixed_7b) and a max pool in the last block's pool branch
(Mixed_7c). Module names follow torchvision's Inception3 (`Mixed_5b/branch5x5_1/conv`,
`.../bn`), so the PyTorch FID checkpoint maps by name. Features are the 2048-d global average
pool. Inference only: BatchNorm uses its running statistics.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

FID_SIZE = 299
FEATURES = 2048


class BasicConv(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU. x: [B,H,W,C] -> [B,H',W',features]."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=self.strides,
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool(x: jax.Array) -> jax.Array:
    """3x3 stride-1 average over the pixels inside the image (padding not counted)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x: jax.Array, stride: int, pad: int = 0) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    """Mixed_5b/c/d: 1x1, 5x5, double 3x3 and pooled branches, concatenated."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: stride-2 reduction."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e: factorised 7x7 branches with c7 channels inside."""

    c7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        row, col = ((1, 7), (0, 3)), ((7, 1), (3, 0))
        conv = lambda f, kp, name: BasicConv(f, kp[0], padding=kp[1], name=name)
        b1 = BasicConv(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv(self.c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(self.c7, row, "branch7x7_2")(b7)
        b7 = conv(192, col, "branch7x7_3")(b7)
        bd = BasicConv(self.c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(self.c7, col, "branch7x7dbl_2")(bd)
        bd = conv(self.c7, row, "branch7x7dbl_3")(bd)
        bd = conv(self.c7, col, "branch7x7dbl_4")(bd)
        bd = conv(192, row, "branch7x7dbl_5")(bd)
        bp = BasicConv(192, (1, 1), name="branch_pool")(_avg_pool(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: stride-2 reduction."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b (average pool branch) and Mixed_7c (max pool branch: max_pool=True)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        split = lambda h, a, b: jnp.concatenate(
            [
                BasicConv(384, (1, 3), padding=(0, 1), name=a)(h),
                BasicConv(384, (3, 1), padding=(1, 0), name=b)(h),
            ],
            axis=-1,
        )
        b1 = BasicConv(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv(384, (1, 1), name="branch3x3_1")(x)
        b3 = split(b3, "branch3x3_2a", "branch3x3_2b")
        bd = BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = split(bd, "branch3x3dbl_3a", "branch3x3dbl_3b")
        pooled = _max_pool(x, 1, 1) if self.max_pool else _avg_pool(x)
        bp = BasicConv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(x: jax.Array, size: int) -> jax.Array:
    """x: [B,H,W,C] -> [B,size,size,C], bilinear on pixel centres without antialiasing
    (PyTorch's interpolate(mode="bilinear", align_corners=False), which pytorch-fid uses)."""
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, size, size, c), method="bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
    """Images in [0, 1] -> pool features. x: [B,H,W,3] -> [B, 2048].

    resize: bilinear to 299x299 first (as pytorch-fid does); without it inputs must be at least
    75x75.
    """

    resize: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        if self.resize:
            x = resize_bilinear(x, FID_SIZE)
        x = 2.0 * x - 1.0
        x = BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool(x, 2)
        x = BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool(x, 2)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))
