"""The on-disk candidate pool cache: what it returns equals the generator's own values, and a damaged
or foreign file is detected and rebuilt, never used."""
import numpy as np
import pytest

from ddpm_codec.coding import pool_cache, prng

COLS, ROWS = 12, 40


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CODEC_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(pool_cache, "MIN_CACHED_BYTES", 0)
    prng.candidate_pool_t.cache_clear()
    yield pool_cache.pool_path(tmp_path, prng.POOL_KEY, COLS, ROWS)
    prng.candidate_pool_t.cache_clear()


def _expected():
    """Element [c, r] = normals_at(POOL_KEY, r*cols + c), computed entry by entry."""
    r, c = np.meshgrid(np.arange(ROWS), np.arange(COLS))
    return prng.normals_at(prng.POOL_KEY, (r * COLS + c).astype(np.uint64))


def _fresh_pool():
    prng.candidate_pool_t.cache_clear()
    return prng.candidate_pool_t(COLS, ROWS).numpy()


def test_written_then_read_back_equal(cache):
    assert not cache.exists()
    built = _fresh_pool()
    assert cache.exists() and cache.stat().st_size == pool_cache.HEADER_BYTES + 4 * COLS * ROWS
    assert np.array_equal(built, _expected())
    read = pool_cache.read_verified(cache, prng.POOL_KEY, COLS, ROWS, lambda n: prng.normals_at(prng.POOL_KEY, n))
    assert read is not None and np.array_equal(read, _expected())
    assert np.array_equal(_fresh_pool(), _expected())


def _entry(n):
    return prng.normals_at(prng.POOL_KEY, n)


def test_damaged_file_is_rebuilt(cache):
    _fresh_pool()
    raw = bytearray(cache.read_bytes())
    raw[pool_cache.HEADER_BYTES + 4 * 7 + 1] ^= 0x10          # one bit of one value
    cache.write_bytes(bytes(raw))
    assert pool_cache.read_verified(cache, prng.POOL_KEY, COLS, ROWS, _entry) is None   # the CRC fails
    assert np.array_equal(_fresh_pool(), _expected())        # rebuilt, and the file rewritten
    assert pool_cache.read_verified(cache, prng.POOL_KEY, COLS, ROWS, _entry) is not None


def test_foreign_values_with_a_valid_crc_are_rejected(cache):
    """A file whose CRC matches its data but whose values are another generator's (here: another key)
    fails the spot check of recomputed entries."""
    other = prng.normal_block(prng.POOL_KEY ^ 1, ROWS, COLS, transposed=True)
    pool_cache.write_atomic(cache, prng.POOL_KEY, other)
    assert pool_cache.read_verified(cache, prng.POOL_KEY, COLS, ROWS, _entry) is None
    assert np.array_equal(_fresh_pool(), _expected())


def test_truncated_file_and_wrong_shape_are_rejected(cache):
    _fresh_pool()
    raw = cache.read_bytes()
    cache.write_bytes(raw[:-4])
    assert pool_cache.read_verified(cache, prng.POOL_KEY, COLS, ROWS, _entry) is None
    pool_cache.write_atomic(cache, prng.POOL_KEY, _expected()[:, :ROWS // 2].copy())   # a header for 12 x 20
    assert pool_cache.read_verified(cache, prng.POOL_KEY, COLS, ROWS, _entry) is None


def test_off_builds_without_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_CODEC_CACHE_DIR", "off")
    monkeypatch.setattr(pool_cache, "MIN_CACHED_BYTES", 0)
    assert pool_cache.cache_dir() is None
    assert np.array_equal(_fresh_pool(), _expected())
    prng.candidate_pool_t.cache_clear()
