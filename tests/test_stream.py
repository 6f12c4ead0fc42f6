"""Streamed training batches: the same rows as the in-memory arrays, for any process count and
any resume point; flips by (seed, step); a worker's error raised where batches are consumed."""

import numpy as np
import pytest

from jldm.data import Dataset, batches_for, load_split, preprocess
from jldm.data.sources import open_split
from jldm.data.stream import ArraySource, Pixels, stream


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    digits = Dataset("digits", str(tmp_path_factory.mktemp("tfds")))
    return open_split(digits, "train"), load_split(digits, "train")


def _all(it):
    return list(it)


def test_a_streamed_split_gives_the_rows_of_the_whole_split(digits):
    records, split = digits
    arrays = preprocess(split.images, 16)
    common = dict(seed=5, batch_size=8, steps_per_call=2, start=0, stop=8)
    got = _all(stream(Pixels(records, 16), **common))
    assert [s for s, _, _ in got] == [0, 2, 4, 6]
    for step, images, labels in got:
        idx = batches_for(5, step, 2, 8, len(split))
        np.testing.assert_array_equal(images, arrays[idx])
        np.testing.assert_array_equal(labels, split.labels[idx])
    # Two processes read halves that make up the same global batches; a resume at step 4
    # reads what the uninterrupted stream read there.
    halves = [
        _all(stream(Pixels(records, 16), process_index=p, process_count=2, **common))
        for p in (0, 1)
    ]
    for (_, whole, _), (_, a, _), (_, b, _) in zip(got, *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([a, b], axis=1), whole)
    resumed = _all(stream(Pixels(records, 16), **{**common, "start": 4}))
    for (s1, x1, _), (s2, x2, _) in zip(resumed, got[2:], strict=True):
        assert s1 == s2
        np.testing.assert_array_equal(x1, x2)


def test_flips_mirror_about_half_of_the_rows_the_same_way_every_time():
    images = np.random.default_rng(0).random((64, 4, 5, 1)).astype(np.float32)
    source = ArraySource(images, np.arange(64))
    common = dict(seed=1, batch_size=32, steps_per_call=1, start=0, stop=4)
    plain = _all(stream(source, **common))
    flipped = _all(stream(source, random_flip=True, **common))
    mirrored = 0
    for (_, x, _), (_, y, _) in zip(plain, flipped, strict=True):
        for a, b in zip(x[0], y[0], strict=True):
            same, mirror = np.array_equal(a, b), np.array_equal(a[:, ::-1], b)
            assert same or mirror
            mirrored += mirror
    assert 0.3 < mirrored / (4 * 32) < 0.7
    again = _all(stream(source, random_flip=True, **common))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(flipped, again, strict=True))
    halves = [
        _all(stream(source, random_flip=True, process_index=p, process_count=2, **common))
        for p in (0, 1)
    ]
    for (_, whole, _), (_, a, _), (_, b, _) in zip(flipped, *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([a, b], axis=1), whole)


class _Broken(ArraySource):
    def rows(self, idx):
        if 7 in idx:
            raise ValueError("record 7 is unreadable")
        return super().rows(idx)


def test_an_error_in_a_worker_is_raised_where_the_batches_are_read():
    source = _Broken(np.zeros((16, 2, 2, 1)), np.zeros(16))
    with pytest.raises(ValueError, match="record 7 is unreadable"):
        _all(stream(source, seed=0, batch_size=4, steps_per_call=1, start=0, stop=8))
