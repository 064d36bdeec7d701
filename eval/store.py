"""Small, generic HDF5 result store (h5py, imported lazily).

Layout: groups are slash paths (``"cifar/lossless"``; ``""`` or ``"/"`` is the root),
datasets are numpy arrays inside them, attributes hang on groups. Every method
opens the file in mode ``"a"`` (created if missing), does its work and closes it
again, so data is on disk as soon as a call returns and a crashed run can be
resumed: ``num_rows`` tells how many rows an ``append_rows`` dataset already holds.

Appendable datasets are resizable along axis 0 (``maxshape=(None, ...)``); each
``append_rows`` call adds a block of rows. Unicode string arrays are stored as
UTF-8 variable-length strings and read back as numpy ``str`` arrays.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np

from ..errors import ResultsError

__all__ = ["ResultStore"]


def _norm(group: str) -> str:
    g = "/".join(p for p in str(group).split("/") if p)
    return "/" + g


def _join(group: str, name: str) -> str:
    n = _norm(name)
    if n == "/":
        raise ValueError(f"empty dataset name {name!r}")
    g = _norm(group)
    return n if g == "/" else g + n


def _to_h5(array) -> tuple[np.ndarray, Any]:
    """Array and h5py dtype to store it with (unicode -> variable-length UTF-8)."""
    import h5py

    a = np.asarray(array)
    if a.dtype.kind == "U":
        dt = h5py.string_dtype("utf-8")
        return a.astype(object), dt
    if a.dtype.kind == "O":
        raise TypeError("object arrays are not supported; use numeric or str arrays")
    return a, a.dtype


def _from_h5(ds) -> np.ndarray:
    import h5py

    if h5py.check_string_dtype(ds.dtype) is not None:
        return ds.asstr()[()].astype(str) if ds.ndim else np.asarray(ds.asstr()[()], dtype=str)
    return ds[()]


def _attr_value(v):
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.ndarray):
        if v.dtype.kind in "OS":
            return [x.decode("utf-8") if isinstance(x, bytes) else x for x in v.tolist()]
        return v
    if isinstance(v, np.generic):
        return v.item()
    return v


class ResultStore:
    """HDF5 file of groups, datasets and attributes; resume-friendly appends.

    ``ResultStore(path)``: nothing is opened until a method is called; the parent
    directory is created on first write.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)

    # -- plumbing ----------------------------------------------------------
    def _open(self, mode: str = "a"):
        import h5py

        if mode != "r":
            parent = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(parent, exist_ok=True)
        try:
            return h5py.File(self.path, mode)
        except OSError as e:   # not HDF5, unreadable, or locked by another process
            raise ResultsError(f"cannot open {self.path} as an HDF5 results file: {e}") from None

    def _open_read(self):
        """Open for reading, or ``None`` if the file does not exist yet."""
        if not os.path.exists(self.path):
            return None
        return self._open("r")

    # -- queries -----------------------------------------------------------
    def has(self, group: str, name: str | None = None) -> bool:
        """Whether ``group`` (or dataset ``group/name``) exists."""
        f = self._open_read()
        if f is None:
            return False
        with f:
            key = _norm(group) if name is None else _join(group, name)
            return key == "/" or key in f

    def num_rows(self, group: str, name: str) -> int:
        """Length along axis 0 of dataset ``group/name``; 0 if it does not exist."""
        f = self._open_read()
        if f is None:
            return 0
        with f:
            key = _join(group, name)
            if key not in f:
                return 0
            ds = f[key]
            return int(ds.shape[0]) if ds.ndim else 1

    def keys(self, group: str = "/") -> list[str]:
        """Names of the members (datasets and subgroups) of ``group``; [] if absent."""
        f = self._open_read()
        if f is None:
            return []
        with f:
            g = _norm(group)
            return sorted(f[g].keys()) if g in f else []

    # -- attributes --------------------------------------------------------
    def set_attrs(self, group: str, **attrs) -> None:
        """Set attributes on ``group`` (created if missing); values: numbers, bools,
        strings, numeric arrays or lists of numbers/strings."""
        with self._open() as f:
            g = f.require_group(_norm(group))
            for k, v in attrs.items():
                if isinstance(v, np.ndarray) and v.dtype.kind == "U":
                    v = v.tolist()
                elif isinstance(v, str):
                    v = str(v)     # numpy str_ has no HDF5 type; a Python str does
                g.attrs[k] = v

    def get_attrs(self, group: str) -> dict:
        """Attributes of ``group`` as a dict of Python scalars, strings, lists or
        numpy arrays; ``{}`` if the group does not exist."""
        f = self._open_read()
        if f is None:
            return {}
        with f:
            g = _norm(group)
            if g not in f:
                return {}
            return {k: _attr_value(v) for k, v in f[g].attrs.items()}

    # -- datasets ----------------------------------------------------------
    def write_array(self, group: str, name: str, array, **attrs) -> None:
        """Write (or overwrite) dataset ``group/name`` with ``array``; optional
        attributes are set on the dataset."""
        data, dt = _to_h5(array)
        with self._open() as f:
            g = f.require_group(_norm(group))
            key = name.strip("/")
            if key in g:
                del g[key]
            ds = g.create_dataset(key, data=data, dtype=dt)
            for k, v in attrs.items():
                ds.attrs[k] = v

    def append_rows(self, group: str, name: str, array) -> int:
        """Append ``array`` (``[n, ...]``) as rows to dataset ``group/name``.

        The dataset is created resizable along axis 0 on first use; later blocks
        must have the same trailing shape ``[...]`` and a dtype castable to the
        stored one. Returns the total number of rows afterwards.
        """
        data, dt = _to_h5(array)
        if data.ndim == 0:
            raise ValueError("append_rows needs an array with a leading row axis")
        with self._open() as f:
            g = f.require_group(_norm(group))
            key = name.strip("/")
            if key not in g:
                chunk_rows = max(1, min(1024, (1 << 16) // max(1, data[0:1].nbytes)))
                g.create_dataset(
                    key,
                    data=data,
                    dtype=dt,
                    maxshape=(None,) + data.shape[1:],
                    chunks=(chunk_rows,) + data.shape[1:],
                )
                return int(data.shape[0])
            ds = g[key]
            if ds.maxshape[0] is not None:
                raise ValueError(f"{group}/{name} was written with write_array, not appendable")
            if tuple(ds.shape[1:]) != tuple(data.shape[1:]):
                raise ValueError(f"row shape {data.shape[1:]} != stored {ds.shape[1:]} for {group}/{name}")
            n0 = ds.shape[0]
            ds.resize(n0 + data.shape[0], axis=0)
            ds[n0:] = data
            return int(ds.shape[0])

    def truncate_rows(self, group: str, name: str, num_rows: int) -> None:
        """Shrink appendable dataset ``group/name`` to its first ``num_rows`` rows (resume after a crash
        between the appends of one record)."""
        with self._open() as f:
            ds = f[_join(group, name)]
            if ds.maxshape[0] is None and ds.shape[0] > num_rows:
                ds.resize(num_rows, axis=0)

    def read(self, group: str, name: str, rows: slice | None = None) -> np.ndarray:
        """Dataset ``group/name`` as a numpy array (``rows`` selects along axis 0).
        ``KeyError`` if absent."""
        f = self._open_read()
        key = _join(group, name)
        if f is None:
            raise KeyError(f"{key} (file {self.path} does not exist)")
        with f:
            if key not in f:
                raise KeyError(key)
            ds = f[key]
            if rows is None:
                return _from_h5(ds)
            import h5py

            if h5py.check_string_dtype(ds.dtype) is not None:
                return ds.asstr()[rows].astype(str)
            return ds[rows]

    # -- nested dicts ------------------------------------------------------
    def write_dict(self, group: str, tree: Mapping[str, Any], attrs: Mapping[str, Any] | None = None) -> None:
        """Write a nested dict of arrays under ``group``: dict values become
        subgroups, everything else a dataset (``write_array``, overwriting).
        ``attrs`` are set on ``group``."""
        for key, value in tree.items():
            if "/" in key:
                raise ValueError(f"dict key {key!r} must not contain '/'")
            if isinstance(value, Mapping):
                self.write_dict(_join(group, key), value)
            else:
                self.write_array(group, key, value)
        if attrs:
            self.set_attrs(group, **attrs)
        elif not tree:
            with self._open() as f:
                f.require_group(_norm(group))

    def read_dict(self, group: str) -> dict:
        """Read ``group`` back as a nested dict (subgroups -> dicts, datasets ->
        arrays). Attributes are not included; see ``get_attrs``."""
        import h5py

        def walk(g) -> dict:
            out = {}
            for k, v in g.items():
                out[k] = walk(v) if isinstance(v, h5py.Group) else _from_h5(v)
            return out

        f = self._open_read()
        if f is None:
            raise KeyError(f"{_norm(group)} (file {self.path} does not exist)")
        with f:
            g = _norm(group)
            if g not in f:
                raise KeyError(g)
            return walk(f[g])
