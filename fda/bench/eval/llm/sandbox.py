"""Run untrusted (model-generated) Python in a locked-down subprocess and say whether it passed.

Layers, each of which alone stops the common failure modes of generated code:

1. **Process**: a fresh interpreter (``python -I``: no user site, no cwd on ``sys.path``, no
   ``PYTHON*`` env) in its own session (the whole process group is killed on timeout), with a
   minimal environment and a fresh temporary working directory that is deleted afterwards.
2. **rlimits**, set by the child interpreter before it reads the program (not in a
   ``preexec_fn``, which can deadlock when the parent has threads): ``RLIMIT_AS`` (memory),
   ``RLIMIT_CPU`` (a CPU backstop), ``RLIMIT_FSIZE`` (no huge files; stdout/stderr go to capped
   files, so a flood of output cannot fill the harness's memory), ``RLIMIT_CORE`` 0.
3. **Wall-time limit** enforced by the parent (SIGKILL to the process group).
4. **Network namespace**: ``unshare -n`` (or ``unshare -rn`` for non-root) when the kernel allows it:
   the child has no network interface at all. Probed once; skipped if unavailable.
5. **Audit hook** (PEP 578) installed before the program runs: socket creation / connect / DNS,
   subprocess / exec / fork / kill / ctypes are refused; ``open`` is allowed read-write only inside
   the working directory and read-only under the Python installation (imports); file-system
   mutations (remove, rename, mkdir, chmod, ...) only inside the working directory.

Audit hooks are not a security boundary against adversarial code (see PEP 578); with the namespace
and the rlimits they make accidental damage by generated solutions very unlikely. Run real
evaluations inside a container as well.

A program passes only if it exits 0 **and** prints a per-run random token after it returns, so
``sys.exit(0)`` before the tests, or a crash after printing, does not count as a pass.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

_GUARD = r'''
import os, resource, sys, traceback
# rlimits first (set here rather than in a preexec_fn, which is unsafe with threads in the parent)
_mem, _cpu, _fsize = (int(v) for v in sys.argv[2:5])
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_token = sys.stdin.readline().strip()
_root = os.path.realpath(os.getcwd())
_src = open(sys.argv[1], encoding="utf-8").read()
_ro = tuple(sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix) if p}))
_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_BLOCK = {"socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.gethostbyname",
          "socket.gethostbyaddr", "socket.sendto", "socket.sendmsg", "subprocess.Popen", "os.system", "os.exec",
          "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty", "os.kill", "os.killpg", "pty.spawn",
          "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.startfile", "webbrowser.open", "urllib.Request"}
_FS = {"os.remove", "os.rmdir", "os.rename", "shutil.rmtree", "shutil.move", "shutil.copyfile", "os.chmod", "os.chown",
       "os.truncate", "os.symlink", "os.link", "os.mkdir", "os.utime", "os.chdir"}
_LIST = {"os.listdir", "os.scandir"}
def _inside(p):
    try:
        p = os.path.realpath(os.fsdecode(p))
    except Exception:
        return False
    return p == _root or p.startswith(_root + os.sep)
def _readable(p):
    rp = os.path.realpath(os.fsdecode(p))
    return _inside(rp) or any(rp == r or rp.startswith(r + os.sep) for r in _ro)
def _hook(event, args):
    if event in _LIST:
        if args and args[0] is not None and not isinstance(args[0], int) and not _readable(args[0]):
            raise PermissionError(f"sandbox: {event} outside the working directory is blocked")
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if isinstance(path, int) or path is None:
            return
        write = bool(mode and any(c in mode for c in "wax+")) or bool((flags or 0) & _W)
        if _inside(path) or (not write and _readable(path)):
            return
        rp = os.path.realpath(os.fsdecode(path))
        raise PermissionError(f"sandbox: open({rp!r}, {mode!r}) outside the working directory is blocked")
    if event in _BLOCK:
        raise PermissionError(f"sandbox: {event} is blocked")
    if event in _FS:
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))][:2]
        if not all(_inside(p) for p in paths):
            raise PermissionError(f"sandbox: {event} outside the working directory is blocked")
sys.addaudithook(_hook)
_g = {"__name__": "__main__", "__builtins__": __builtins__}
try:
    exec(compile(_src, "program.py", "exec"), _g)
except BaseException:
    traceback.print_exc()
    sys.stderr.flush()
    os._exit(3)
sys.stdout.flush()
sys.stdout.write("\n" + _token + "\n")
sys.stdout.flush()
os._exit(0)
'''


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: ``status`` is ``passed``, ``failed`` (non-zero exit, exception,
    rlimit kill, missing token) or ``timeout``; tails of stdout/stderr for debugging."""

    passed: bool
    status: str
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str


@functools.lru_cache(maxsize=1)
def network_isolation_prefix() -> tuple[str, ...]:
    """``("unshare", "-n")`` or ``("unshare", "-rn")`` if that works here, else ``()``."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    for flags in (("-n",), ("-rn",)):
        try:
            if subprocess.run([exe, *flags, "true"], capture_output=True, timeout=5).returncode == 0:
                return (exe, *flags)
        except (OSError, subprocess.SubprocessError):
            continue
    return ()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - n))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_program(program: str, *, timeout: float = 10.0, memory_mb: int = 1024, file_mb: int = 16,
                isolate_network: bool = True) -> ExecResult:
    """Execute ``program`` (Python source, tests included) in the sandbox; see the module docstring.

    ``timeout``: wall seconds; ``memory_mb``: address-space limit; ``file_mb``: largest file
    (including captured stdout/stderr). Never raises for anything the program does.
    """
    work = Path(tempfile.mkdtemp(prefix="fda-exec-"))
    token = secrets.token_hex(16)
    try:
        (work / "program.py").write_text(program, encoding="utf-8")
        prefix = network_isolation_prefix() if isolate_network else ()
        limits = [str(memory_mb * 2**20), str(int(timeout) + 2), str(file_mb * 2**20)]
        cmd = [*prefix, sys.executable, "-I", "-c", _GUARD, str(work / "program.py"), *limits]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        out_f, err_f = work / ".stdout", work / ".stderr"
        t0 = time.perf_counter()
        with open(out_f, "wb") as out, open(err_f, "wb") as err:
            proc = subprocess.Popen(
                cmd, cwd=work, env=env, stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True,
            )
            try:
                proc.communicate(input=(token + "\n").encode(), timeout=timeout)
                status = None
            except subprocess.TimeoutExpired:
                status = "timeout"
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole session: also grandchildren
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        seconds = time.perf_counter() - t0
        stdout, stderr = _tail(out_f), _tail(err_f)
        if status is None:
            lines = stdout.rstrip("\n").split("\n")
            status = "passed" if proc.returncode == 0 and lines and lines[-1] == token else "failed"
        return ExecResult(status == "passed", status, proc.returncode, seconds, stdout.replace(token, "<token>"), stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_programs(programs: Sequence[str], *, workers: int | None = None, **kwargs: object) -> list[ExecResult]:
    """:func:`run_program` over many programs, ``workers`` at a time (default: CPU count, max 8)."""
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, **kwargs), programs))  # type: ignore[arg-type]
