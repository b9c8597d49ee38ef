"""Compressed sums (dist.compress) against NumPy references, bit for bit, at P = 1-4."""

import numpy as np
import pytest

from desmpi.kernels.compress import pack, pack_topk, topk_count, unpack
from tests.conftest import run_mpi


@pytest.mark.parametrize("P", [1, 2, 3, 4])
def test_compressed_collectives_match_numpy(P):
    run_mpi(P, ["tests/mpi/compress_check.py"], timeout=180)


def test_bf16_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0);
    # 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6
    x = np.array([1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 0.0],
                 dtype=np.float32)
    assert unpack("bf16", pack("bf16", x)).tolist() == [1.0, 1 + 2 ** -6, 1 + 2 ** -7, -2.5,
                                                       0.0]
    rng = np.random.default_rng(0)
    y = rng.normal(size=10000).astype(np.float32)
    err = np.abs(unpack("bf16", pack("bf16", y)) - y) / np.abs(y)
    assert err.max() <= 2 ** -8  # half a unit in the last of 8 significant bits
    assert np.array_equal(unpack("fp16", pack("fp16", y)), y.astype(np.float16).astype(np.float32))


def test_topk_keeps_the_largest():
    x = np.array([0.1, -5.0, 0.3, 2.0, -0.2, 0.0, 7.0, 1.0], dtype=np.float32)
    words, dec = pack_topk(x, np.array([0, 4, 8]), 0.5)
    assert words.size == 3 * (2 + 2)
    assert np.flatnonzero(dec).tolist() == [1, 3, 6, 7]
    assert topk_count(10, 0.1) == 1 and topk_count(0, 0.5) == 0 and topk_count(3, 1.0) == 3
