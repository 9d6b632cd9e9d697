"""Atomic file writes, with no heavy imports (the cheap workflow jobs use them too).

A reader never sees a half-written file: either the old file, no file, or the complete new one.
Temporary files are named ``.{name}.{pid}.{random}.tmp``; one left behind by a killed writer
(its pid no longer alive on this machine) is removed by the next write of the same file.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _read_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it; done once, at import
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def umask_mode(*, directory: bool = False) -> int:
    """The mode a plain ``open`` (or ``mkdir``) gives a new file (directory) under the umask."""
    return (0o777 if directory else 0o666) & ~_UMASK


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete the temporary siblings (files or directories) of ``target`` left by writers that
    died (killed jobs): those whose pid is no longer alive on this machine."""
    removed = []
    for tmp in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        pid = tmp.name[len(target.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``, on error delete it.

    A reader never sees a half-written ``path``: either the old file, no file, or the new one.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(tmp_path, umask_mode())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def normalize_modes(root: Path) -> None:
    """Give ``root`` and everything under it the umask's mode: some writers (``mkdtemp``, HF
    ``save_pretrained``'s safetensors files) create them private (0700/0600), and every output of
    the workflow is readable like a plain ``open`` would make it."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, umask_mode(directory=path.is_dir()))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` whole, on error it is
    deleted. A reader sees no ``path``, the old one, or the complete new one, never a partial one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        normalize_modes(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.old-", suffix=".tmp", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(obj: object, path: str | os.PathLike) -> Path:
    """Write JSON atomically (sorted keys, so equal objects give equal bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    return Path(path)
