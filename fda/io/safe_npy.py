"""Reading ``.npy`` files without running pickle code from them.

A plain numeric ``.npy`` file is a header and raw bytes; NumPy reads it with ``allow_pickle=False``.
An *object* array (``np.save`` of a dict, as the official FDA NLU code writes its anchors) is a
pickle, and ``np.load(..., allow_pickle=True)`` would run whatever that pickle asks for. Here such a
body goes through :class:`NumpyOnlyUnpickler`, which rebuilds only what NumPy needs to restore
arrays (``ndarray``, ``dtype``, the reconstruct helpers, scalars) and plain containers; any other
global (``os.system``, ``builtins.eval``, a class of some package, ...) is refused with
:class:`UnsafePickleError` naming the file and the global, before anything is called.
"""

from __future__ import annotations

import builtins
import codecs
import collections
import io
import os
import pickle
from typing import Any, BinaryIO

import numpy as np

from fda.io.checkpoints import CheckpointError


class UnsafePickleError(CheckpointError):
    """A pickled ``.npy`` body asks for a global that is not needed to rebuild NumPy arrays."""


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """``name`` from the first of ``modules`` that has it (NumPy 2 moved ``numpy.core`` to
    ``numpy._core``; files written by NumPy 1 name the old module)."""
    import importlib

    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {modules} defines {name}")


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object: the globals a pickled NumPy array (of arrays, dicts, lists,
    scalars) refers to, under the module names of NumPy 1 and NumPy 2."""
    reconstruct = _numpy_attr(_MULTIARRAY, "_reconstruct")
    scalar = _numpy_attr(_MULTIARRAY, "scalar")
    out: dict[tuple[str, str], Any] = {}
    for module in _MULTIARRAY:
        out[(module, "_reconstruct")] = reconstruct
        out[(module, "scalar")] = scalar
    try:  # protocol-5 pickles rebuild arrays from a buffer
        frombuffer = _numpy_attr(_NUMERIC, "_frombuffer")
        for module in _NUMERIC:
            out[(module, "_frombuffer")] = frombuffer
    except ImportError:  # pragma: no cover - every supported NumPy has it
        pass
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    # plain containers a pickle may name explicitly (older protocols, dict subclasses)
    for name in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "complex"):
        out[("builtins", name)] = out[("__builtin__", name)] = getattr(builtins, name)
    out[("collections", "OrderedDict")] = collections.OrderedDict
    # how protocols 0-2 spell a bytes object (a str encoded with a codec: data, no code)
    out[("_codecs", "encode")] = codecs.encode
    return out


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals of :func:`_allowed_globals`.

    ``source`` names the file in the error; ``find_class`` is the only place a pickle can reach
    code, so refusing there means nothing outside the allow-list is ever called or imported.
    """

    def __init__(self, file: BinaryIO, *, source: str = "<pickle>"):
        super().__init__(file)
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refused to unpickle the global {module}.{name}; only NumPy arrays, dtypes, "
                "scalars and plain containers (dict, list, tuple) are read from pickled .npy files, so nothing "
                "in the file is run. If you trust this file and need it, load it yourself with "
                "numpy.load(path, allow_pickle=True)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: refused a persistent id in a pickled .npy body ({pid!r})")


def restricted_loads(data: bytes, *, source: str = "<pickle>") -> Any:
    """Unpickle ``data`` with :class:`NumpyOnlyUnpickler`."""
    return NumpyOnlyUnpickler(io.BytesIO(data), source=source).load()


def _read_header(f: BinaryIO, source: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            return fmt.read_array_header_1_0(f)
        if version == (2, 0):
            return fmt.read_array_header_2_0(f)
        # version 3.0 (utf-8 field names): the private reader, or a clear error
        reader = getattr(fmt, "_read_array_header", None)
        if reader is None:
            raise ValueError(f"unsupported .npy format version {version}")
        return reader(f, version)
    except ValueError as err:
        raise CheckpointError(f"{source}: not a readable .npy file ({err})") from err


def npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """``(shape, dtype)`` of a ``.npy`` file from its header alone (an object array: its own
    shape, ``()`` for a pickled dict, and dtype ``object``)."""
    with open(path, "rb") as f:
        shape, _, dtype = _read_header(f, os.fspath(path))
    return tuple(shape), dtype


def load_npy(path: str | os.PathLike) -> np.ndarray:
    """The array in ``path``. Numeric arrays are read as NumPy reads them without pickles; an
    object array's pickled body goes through :class:`NumpyOnlyUnpickler` (a 0-d object array, as
    ``np.save`` writes a dict, comes back as that 0-d array: ``.item()`` gives the dict)."""
    source = os.fspath(path)
    with open(path, "rb") as f:
        shape, _fortran, dtype = _read_header(f, source)
        if not dtype.hasobject:
            f.seek(0)
            try:
                return np.load(f, allow_pickle=False)
            except ValueError as err:
                raise CheckpointError(f"{source}: cannot read the array ({err})") from err
        try:
            arr = NumpyOnlyUnpickler(f, source=source).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{source}: the pickled array is corrupt ({type(err).__name__}: {err})") from err
    if not isinstance(arr, np.ndarray) or tuple(arr.shape) != tuple(shape):
        raise CheckpointError(f"{source}: the pickled body is not the object array of shape {tuple(shape)} its header announces")
    return arr


def load_npy_object(path: str | os.PathLike) -> Any:
    """The Python object ``np.save`` stored in ``path`` (a dict of arrays, ...): the single item of
    a 0-d object array, or the array itself when the file holds anything else."""
    arr = load_npy(path)
    return arr.item() if arr.dtype.hasobject and arr.shape == () else arr


__all__ = ["NumpyOnlyUnpickler", "UnsafePickleError", "load_npy", "load_npy_object", "npy_header", "restricted_loads"]
