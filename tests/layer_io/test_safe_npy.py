"""Reading .npy files without running their pickles (fda.io.safe_npy): the official FDA NLU anchor
files are object arrays holding a pickled dict; anything but NumPy arrays and plain containers is
refused before it runs."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from fda.io.checkpoints import CheckpointError
from fda.io.safe_npy import (
    UnsafePickleError,
    load_npy,
    load_npy_object,
    npy_header,
    restricted_loads,
)


def _nlu_dict(n: int = 4, tokens: int = 3, d: int = 8) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"input": rng.standard_normal((n, tokens, d)).astype(np.float32),
            "gt": rng.standard_normal((n, tokens, d)).astype(np.float32),
            "attention_mask": np.zeros((n, 1, tokens, tokens), np.float32)}


def _npy_with_body(path, body: bytes) -> None:
    """A .npy file whose header announces a 0-d object array, followed by ``body`` (a pickle)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|O", "fortran_order": False, "shape": ()})
    path.write_bytes(buf.getvalue() + body)


def test_a_pickled_dict_of_arrays_comes_back_equal(tmp_path):
    d = _nlu_dict()
    np.save(tmp_path / "a.npy", d)  # what the official NLU construct_fda.py does
    got = load_npy_object(tmp_path / "a.npy")
    assert set(got) == set(d)
    for k in d:
        assert got[k].dtype == d[k].dtype and np.array_equal(got[k], d[k])
    assert npy_header(tmp_path / "a.npy") == ((), np.dtype(object))


def test_numpy1_module_names_and_older_protocols_are_read(tmp_path):
    """NumPy 1 (the official environment pins 1.26.4) writes protocol 3 and names numpy.core."""
    d = _nlu_dict()
    body = pickle.dumps(np.asanyarray(d), protocol=3).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in body
    _npy_with_body(tmp_path / "old.npy", body)
    got = load_npy_object(tmp_path / "old.npy")
    assert np.array_equal(got["input"], d["input"])
    for proto in (2, 5):  # protocol 5: arrays rebuilt from an in-band buffer (numpy _frombuffer)
        _npy_with_body(tmp_path / f"p{proto}.npy", pickle.dumps(np.asanyarray(d), protocol=proto))
        assert np.array_equal(load_npy_object(tmp_path / f"p{proto}.npy")["gt"], d["gt"])


def test_numeric_arrays_are_read_without_pickle(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "x.npy", x)
    assert np.array_equal(load_npy(tmp_path / "x.npy"), x)
    assert npy_header(tmp_path / "x.npy") == ((2, 3, 4), np.dtype(np.float32))


class _RunsCommand:
    """Unpickling this calls os.system: the classic malicious pickle."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    arr = np.empty((), dtype=object)
    arr[()] = {"input": np.zeros((2, 2), np.float32), "x": _RunsCommand(str(marker))}
    _npy_with_body(tmp_path / "evil.npy", pickle.dumps(arr, protocol=3))
    with pytest.raises(UnsafePickleError) as err:
        load_npy_object(tmp_path / "evil.npy")
    msg = str(err.value)
    assert "evil.npy" in msg and ("posix.system" in msg or "os.system" in msg)
    assert not marker.exists()  # refused before anything ran
    # the same pickle on its own, and other dangerous globals
    for payload in (pickle.dumps(_RunsCommand(str(marker))), b"cbuiltins\neval\n(S'1+1'\ntR."):
        with pytest.raises(UnsafePickleError, match="refused to unpickle the global"):
            restricted_loads(payload, source="payload")
    assert not marker.exists()


def test_array_subclasses_and_foreign_classes_are_refused(tmp_path):
    arr = np.empty((), dtype=object)
    arr[()] = np.ma.masked_array([1.0, 2.0])
    _npy_with_body(tmp_path / "masked.npy", pickle.dumps(arr, protocol=3))
    with pytest.raises(UnsafePickleError, match=r"numpy\.ma\.core"):
        load_npy(tmp_path / "masked.npy")


def test_unsafe_pickle_is_a_checkpoint_error_the_cli_prints(tmp_path):
    assert issubclass(UnsafePickleError, CheckpointError)
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(CheckpointError, match="junk.npy"):
        load_npy(tmp_path / "junk.npy")
    _npy_with_body(tmp_path / "cut.npy", pickle.dumps(np.asanyarray(_nlu_dict()), protocol=4)[:40])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_npy(tmp_path / "cut.npy")
