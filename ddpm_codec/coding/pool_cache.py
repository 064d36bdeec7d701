"""A verified on-disk cache of the candidate pool (:func:`.prng.candidate_pool_t`): derived data, so
every read is checked and a file that fails is rebuilt, never trusted.

Building the 2^14 × 3072 pool costs ~1 s (2 cores) in every new process, a quarter of a one-image
CLI encode. The cache file holds a 64-byte header (magic, format version, the PRNG key, columns,
rows, CRC-32 of the data) and the pool's float32 values ``[cols, rows]``. A read:

1. checks the header against what is asked for (key, shape, version);
2. computes the CRC-32 of all the data (~0.05 s for 192 MB) against the header's: a truncated,
   damaged or half-written file fails;
3. recomputes ``SPOT_CHECKS`` entries at fresh random positions with :func:`.prng.normals_at` and
   compares them bit for bit: a file made by another definition of the generator fails.

Any failure (or a missing file) rebuilds the pool and rewrites the file atomically (temporary file,
then rename: concurrent processes never see half a file). The data are mapped copy-on-write, so
processes on one machine (sharded runs) share the page cache's copy. ``DDPM_CODEC_CACHE_DIR`` names
the folder (default ``$XDG_CACHE_HOME/ddpm-codec`` or ``~/.cache/ddpm-codec``); ``off`` disables the
cache. Pools under ``MIN_CACHED_BYTES`` are built each time (cheaper than a file).
"""
from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

MAGIC = b"DDPMPOOL"
VERSION = 1
_HEADER = struct.Struct("<8sIQQQI")     # magic, version, key, cols, rows, crc32 (44 bytes, padded to 64)
HEADER_BYTES = 64
SPOT_CHECKS = 1024
MIN_CACHED_BYTES = 16 << 20


def cache_dir() -> Path | None:
    """The cache folder, or None when ``DDPM_CODEC_CACHE_DIR=off``."""
    env = os.environ.get("DDPM_CODEC_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ddpm-codec"


def pool_path(folder: Path, key: int, cols: int, rows: int) -> Path:
    return folder / f"pool-v{VERSION}-{key:016x}-{cols}x{rows}.bin"


def _crc(data: np.ndarray) -> int:
    return zlib.crc32(memoryview(data.reshape(-1)).cast("B"))


def read_verified(path: Path, key: int, cols: int, rows: int,
                  entry: Callable[[np.ndarray], np.ndarray]) -> np.ndarray | None:
    """The pool ``[cols, rows]`` from ``path`` if it passes every check, else None. ``entry(counters)``
    recomputes values at flat pool counters ``r·cols + c`` (:func:`.prng.normals_at` on the pool key)."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
        if len(head) != HEADER_BYTES or os.path.getsize(path) != HEADER_BYTES + 4 * cols * rows:
            return None
        magic, version, k, c, r, crc = _HEADER.unpack(head[:_HEADER.size])
        if (magic, version, k, c, r) != (MAGIC, VERSION, key, cols, rows):
            return None
        data = np.memmap(path, dtype=np.float32, mode="c", offset=HEADER_BYTES, shape=(cols, rows))
    except (OSError, ValueError, struct.error):
        return None
    if _crc(data) != crc:
        return None
    rng = np.random.default_rng(int.from_bytes(os.urandom(8), "little"))   # positions no file can anticipate
    cc = rng.integers(0, cols, SPOT_CHECKS)
    rr = rng.integers(0, rows, SPOT_CHECKS)
    want = entry(rr.astype(np.uint64) * np.uint64(cols) + cc.astype(np.uint64))
    if not np.array_equal(np.asarray(data[cc, rr]).view(np.uint32), want.astype(np.float32).view(np.uint32)):
        return None
    return data


def write_atomic(path: Path, key: int, data: np.ndarray) -> None:
    """Write the pool ``data`` ``[cols, rows]`` float32 to ``path`` (temporary file + rename); any
    error leaves no file and is ignored (the cache only saves time)."""
    cols, rows = data.shape
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(_HEADER.pack(MAGIC, VERSION, key, cols, rows, _crc(np.ascontiguousarray(data))).ljust(HEADER_BYTES,
                                                                                                       b"\0"))
            f.write(memoryview(np.ascontiguousarray(data).reshape(-1)).cast("B"))
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def cached_pool(key: int, cols: int, rows: int, build: Callable[[], np.ndarray],
                entry: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The pool from the cache when a verified file holds it, else ``build()`` (and cache it)."""
    folder = cache_dir()
    if folder is None or 4 * cols * rows < MIN_CACHED_BYTES:
        return build()
    path = pool_path(folder, key, cols, rows)
    data = read_verified(path, key, cols, rows, entry)
    if data is not None:
        return data
    data = build()
    write_atomic(path, key, data)
    return data
