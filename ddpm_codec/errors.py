"""The one exception root, :class:`Error`: everything ddpm-codec refuses on purpose is one of these.

Each error also subclasses the builtin its callers caught before (``ValueError``, ``OSError``,
``FileNotFoundError``), so existing ``except ValueError`` code keeps working. Catch :class:`Error`
for "ddpm-codec said no" (one line, the reason); anything else is a bug.
"""
from __future__ import annotations


class Error(Exception):
    """Root of the errors ddpm-codec raises on purpose; the message is one line naming the reason."""


class InputError(Error, ValueError):
    """An argument or an input image the codec refuses: wrong shape or depth, too large, an unknown
    profile, a setting the model cannot serve."""


class NotFoundError(Error, FileNotFoundError):
    """A file that does not exist (an input image or ``.ddpm`` file)."""


class ModelNotFoundError(NotFoundError):
    """No model by that name or path, or none among the shipped and registered models that a file names."""


class ModelError(Error, ValueError):
    """A model file that cannot be loaded (bad config, weights or hash), or a model that lacks a part."""


class ResultsError(Error, ValueError):
    """A results file (``rd-curve``'s HDF5) that does not fit the run asked for."""
