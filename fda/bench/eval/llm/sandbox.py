"""Run model-generated Python under OS-level isolation and decide pass/fail outside it.

A task (:class:`CodeTask`) is a **solution** (untrusted: the model's code) and **tests** (trusted:
the benchmark's). They never share a process:

* the **candidate** sandbox runs the solution and then serves calls: it reads requests
  ``("call", name, args, kwargs)`` and answers ``("ok", value)``, ``("raise", type, message)`` or
  ``("nonliteral", type)``;
* the **judge** sandbox runs the tests, with every name the tests use that the solution defines
  bound to a proxy that forwards the call to the candidate;
* values cross between them only as literal text (:func:`_literal`) read back with
  :func:`ast.literal_eval`: no code, no pickles, no objects with their own ``__eq__``; a result
  that is not plain data (a generator, a class instance) fails the test;
* the harness counts a pass only if the judge exits 0 **and** wrote ``PASS`` to a pipe that only
  the judge holds. Nothing the candidate prints, writes or exits with reaches that decision.

Each sandbox is a ``bwrap`` (bubblewrap) process tree with new PID, network, IPC, UTS and mount
namespaces and ``--die-with-parent``: killing the bwrap process kills every descendant,
``setsid`` or not. The file system is read-only (``/usr``, the ``/bin``/``/lib*`` links and the
Python installation), with a fresh ``/proc``, a minimal ``/dev`` and one size-capped private
tmpfs at ``/tmp`` (the working directory and ``HOME``). The program runs as an unprivileged uid:

* started as **root**, bwrap sets up the namespaces with root's rights (an unprivileged bwrap
  cannot bind an interpreter under ``/root``, mode 0700: it resolves every bind source as the
  calling uid) and ``setpriv`` switches to a fresh random uid in :data:`SANDBOX_UID_RANGE` with
  no groups, no capabilities, an empty bounding set and ``no_new_privs`` before Python starts;
  candidate and judge get different uids, so the per-uid ``RLIMIT_NPROC`` is per sandbox;
* started as **another user**, bwrap adds an unprivileged user namespace (``--unshare-user``,
  ``--disable-userns``) and the program keeps that user's uid (``RLIMIT_NPROC`` then counts per
  user namespace, i.e. per sandbox, on Linux >= 5.14).

rlimits (``RLIMIT_AS``, ``RLIMIT_CPU``, ``RLIMIT_NPROC``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, no
core dumps) are set by the first lines of the sandboxed interpreter, before the solution is read:
hard limits cannot be raised again without ``CAP_SYS_RESOURCE``. stdout/stderr go to memory files
that ``RLIMIT_FSIZE`` caps; the harness reads only their tails.

If bwrap is missing or the namespaces do not work, :class:`SandboxUnavailableError` says what to
install; ``isolation="none"`` runs the same two processes without any isolation (UNSAFE: the
model's code runs with the harness's rights) and must be asked for explicitly.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import dataclasses
import functools
import inspect
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

ISOLATIONS = ("bwrap", "none")
#: uids handed to sandboxes when the harness runs as root: 0x70000000-0x7fffffff, the range systemd's
#: uid table leaves unused (no users, no container ranges); a random one per sandbox, so two runs collide
#: with probability ~n^2/2^29 and a collision only shares an RLIMIT_NPROC budget
SANDBOX_UID_RANGE = (0x70000000, 0x7FFFFFFF)
_INSTALL_HINT = (
    "Install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; as root `setpriv` from util-linux is used too) "
    "and allow namespaces (in a container: unprivileged user namespaces, or CAP_SYS_ADMIN for root). "
    "To run model-generated code WITHOUT isolation, at your own risk, pass isolation='none' "
    "(evaluate_llm(..., sandbox={'isolation': 'none'}))."
)


class SandboxUnavailableError(RuntimeError):
    """The sandbox cannot run here (no bwrap, namespaces refused, ...); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class CodeTask:
    """One program to judge.

    ``solution``: the model's code (untrusted; runs only in the candidate sandbox).
    ``tests``: the benchmark's test code (trusted; runs in the judge).
    ``setup``: trusted code the judge runs before the tests (MBPP's ``test_setup_code``; for
    HumanEval the prompt, so the tests use the prompt's own helpers such as ``encode_cyclic``).
    ``entry_point``: a name always forwarded to the candidate, even if ``setup`` defines it
    (HumanEval's function, whose stub the prompt defines).
    """

    solution: str
    tests: str
    setup: str = ""
    entry_point: str | None = None


@dataclasses.dataclass(frozen=True)
class ExecResult:
    """Outcome of one task: ``status`` is ``passed``, ``failed`` or ``timeout``.

    ``returncode`` is the judge's exit status; ``stdout``/``stderr`` are the tails of the
    candidate's output, ``judge`` the tail of the judge's (a failing test's traceback), ``reason``
    its last line.
    """

    passed: bool
    status: str
    returncode: int | None
    seconds: float
    stdout: str
    stderr: str
    judge: str = ""
    reason: str = ""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. ``timeout``: wall seconds for the whole task (both sandboxes);
    ``memory_mb``: address space per process; ``max_procs``: processes + threads per sandbox;
    ``file_mb``: largest file (and captured output); ``scratch_mb``: size of the ``/tmp`` tmpfs."""

    timeout: float = 10.0
    memory_mb: int = 1024
    file_mb: int = 16
    max_procs: int = 16
    scratch_mb: int = 64

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"sandbox {f.name} must be positive, got {getattr(self, f.name)!r}")

    def for_stage(self) -> dict[str, int]:
        """The rlimits the sandboxed interpreter sets on itself (bytes / seconds / counts)."""
        cpu = int(self.timeout) + 1  # a backstop; the wall clock is the real limit
        return {"as": self.memory_mb * 2**20, "cpu": cpu, "nproc": self.max_procs, "fsize": self.file_mb * 2**20,
                "nofile": 256, "max_message": max(2**20, min(64 * 2**20, self.memory_mb * 2**20 // 4))}


# ---------------------------------------------------------------------------------------------
# Stage programs. They run inside the sandboxes; their source is sent with ``python -c`` (see
# _stage_source), so the sandbox needs no access to this repository. Each imports what it uses.


def _literal(value: object, depth: int = 0) -> str:
    """Text that :func:`ast.literal_eval` turns back into ``value``; plain data only.

    None, bool, int, float (inf as ``1e999``), complex, str, bytes, and lists, tuples, dicts and
    sets of them. Subclasses become their base type (a ``Counter`` a dict, a namedtuple a tuple,
    a frozenset a set); anything else raises ``TypeError``. NaN has no literal: ``ValueError``.
    """
    if depth > 200:
        raise ValueError("value nested too deeply")
    if value is None or value is True or value is False:
        return repr(value)
    if isinstance(value, int):
        return int.__repr__(int(value))
    if isinstance(value, float):
        value = float(value)
        if value != value:
            raise ValueError("NaN cannot be sent as a literal")
        if value in (float("inf"), float("-inf")):
            return "1e999" if value > 0 else "-1e999"
        return float.__repr__(value)
    if isinstance(value, complex):
        value = complex(value)
        for part in (value.real, value.imag):
            if part != part or part in (float("inf"), float("-inf")):
                raise ValueError("non-finite complex cannot be sent as a literal")
        return complex.__repr__(value)
    if isinstance(value, str):
        return str.__repr__(str.__str__(value))
    if isinstance(value, (bytes, bytearray)):
        return bytes.__repr__(bytes(value))
    if isinstance(value, dict):
        items = ", ".join(f"{_literal(k, depth + 1)}: {_literal(v, depth + 1)}" for k, v in dict.items(value))
        return "{" + items + "}"
    if isinstance(value, tuple):
        parts = [_literal(v, depth + 1) for v in tuple.__iter__(value)]
        return "(" + parts[0] + ",)" if len(parts) == 1 else "(" + ", ".join(parts) + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v, depth + 1) for v in list.__iter__(value)) + "]"
    if isinstance(value, (set, frozenset)):
        parts = [_literal(v, depth + 1) for v in value]
        return "{" + ", ".join(parts) + "}" if parts else "set()"
    raise TypeError(f"a {type(value).__qualname__} is not plain data")


def _stage_limits(limits: dict) -> None:
    """Apply the rlimits (soft = hard, so the program cannot raise them again)."""
    import resource

    pairs = [(resource.RLIMIT_AS, limits["as"], limits["as"]), (resource.RLIMIT_CPU, limits["cpu"], limits["cpu"] + 1),
             (resource.RLIMIT_NPROC, limits["nproc"], limits["nproc"]), (resource.RLIMIT_FSIZE, limits["fsize"], limits["fsize"]),
             (resource.RLIMIT_NOFILE, limits["nofile"], limits["nofile"]), (resource.RLIMIT_CORE, 0, 0)]
    for res, soft, hard in pairs:
        resource.setrlimit(res, (soft, hard))


def _read_all(fd: int) -> str:
    """Everything readable from ``fd`` (a memory file or pipe), then close it."""
    import os

    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8")


def _stage_candidate(cfg: dict) -> None:
    """Run the solution, then answer the judge's requests until it hangs up."""
    import ast
    import builtins
    import os

    source = _read_all(cfg["code_fd"])
    requests = os.fdopen(cfg["request_fd"], "rb")
    replies = os.fdopen(cfg["reply_fd"], "wb")
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    load_error = None
    try:
        exec(compile(source, "solution.py", "exec"), namespace)
    except BaseException as exc:  # the solution's own error (SystemExit included) fails every call
        import traceback

        traceback.print_exc()
        load_error = exc

    def answer(request: tuple) -> tuple:
        if load_error is not None:
            return ("raise", type(load_error).__name__, f"the solution failed to load: {load_error!r}"[:2000])
        op, name = request[0], request[1]
        if name not in namespace:
            return ("missing",) if op == "describe" else ("raise", "NameError", f"name {name!r} is not defined")
        if op == "describe" and callable(namespace[name]):
            return ("callable",)
        try:
            value = namespace[name] if op == "describe" else namespace[name](*request[2], **request[3])
        except BaseException as exc:
            return ("raise", type(exc).__name__, str(exc)[:2000])
        return ("value" if op == "describe" else "ok", value)

    for line in requests:
        reply = answer(ast.literal_eval(line.decode("utf-8")))
        try:
            text = _literal(reply)
        except (TypeError, ValueError, RecursionError, MemoryError) as exc:
            text = _literal(("nonliteral", type(reply[-1]).__qualname__, str(exc)[:500]))
        replies.write(text.encode("utf-8") + b"\n")
        replies.flush()


def _stage_judge(cfg: dict) -> None:
    """Run the trusted tests with the solution's names forwarded to the candidate; ``PASS`` on success."""
    import ast
    import builtins
    import os
    import sys

    spec = ast.literal_eval(_read_all(cfg["spec_fd"]))
    requests = os.fdopen(cfg["request_fd"], "wb")
    replies = os.fdopen(cfg["reply_fd"], "rb")
    max_message = cfg["limits"]["max_message"]

    class CandidateError(Exception):
        """The candidate raised something we do not rebuild, or broke the protocol."""

    CandidateError.__qualname__ = "CandidateError"  # tracebacks: not _stage_judge.<locals>.CandidateError

    # Exceptions rebuilt with their own type, so a test expecting ValueError sees one. StopIteration
    # is left out (raised inside the tests it could end a loop early instead of failing it).
    rebuildable = {n: c for n, c in vars(builtins).items()
                   if isinstance(c, type) and issubclass(c, Exception) and not issubclass(c, (StopIteration, StopAsyncIteration))}

    def ask(request: tuple) -> tuple:
        try:
            text = _literal(request)
        except (TypeError, ValueError) as exc:
            raise CandidateError(f"cannot send this argument to the candidate (only plain data crosses): {exc}") from None
        requests.write(text.encode("utf-8") + b"\n")
        requests.flush()
        line = replies.readline(max_message + 1)
        if not line.endswith(b"\n"):
            raise CandidateError("the candidate hung up or sent an oversized reply")
        try:
            reply = ast.literal_eval(line.decode("utf-8"))
        except Exception as exc:
            raise CandidateError(f"unreadable reply from the candidate: {exc!r}") from None
        if not (isinstance(reply, tuple) and reply and isinstance(reply[0], str)):
            raise CandidateError("malformed reply from the candidate")
        if reply[0] == "raise" and len(reply) == 3 and isinstance(reply[1], str) and isinstance(reply[2], str):
            cls = rebuildable.get(reply[1])
            try:
                exc = cls(reply[2]) if cls else CandidateError(f"{reply[1]}: {reply[2]}")
            except Exception:
                exc = CandidateError(f"{reply[1]}: {reply[2]}")
            raise exc
        if reply[0] == "nonliteral":
            raise CandidateError(f"the candidate returned something that is not plain data: {reply[1:]}")
        return reply

    def forward(name: str):
        def call(*args, **kwargs):
            reply = ask(("call", name, args, kwargs))
            if reply[0] != "ok" or len(reply) != 2:
                raise CandidateError("malformed reply from the candidate")
            return reply[1]

        call.__name__ = call.__qualname__ = name
        return call

    def unavailable(name: str, why: str):
        def call(*args, **kwargs):
            raise CandidateError(f"{name!r} could not be brought over from the candidate: {why}")

        return call

    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        for name in spec["modules"]:  # `import math` in the solution and `math.isclose` in the tests
            namespace[name] = __import__(name)
        for name in spec["proxied"]:
            try:
                reply = ask(("describe", name))
            except CandidateError as exc:  # e.g. a module or object bound at top level
                reply = ("unavailable", str(exc))
            if reply[0] == "callable":
                namespace[name] = forward(name)
            elif reply[0] == "value" and len(reply) == 2:
                namespace[name] = reply[1]
            else:
                # never leave the name unbound: a builtin of the same name (`min`) must not stand in for it;
                # a test that only uses a local of that name is unaffected
                namespace[name] = unavailable(name, str(reply[1:])[:300])
        exec(compile(spec["setup"], "setup.py", "exec"), namespace)
        if spec["entry_point"]:
            namespace[spec["entry_point"]] = forward(spec["entry_point"])
        exec(compile(spec["tests"], "tests.py", "exec"), namespace)
    except BaseException:
        import traceback

        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # not sys.exit: nothing the tests left behind (atexit, threads) runs after the verdict
    sys.stdout.flush()
    os.write(cfg["result_fd"], b"PASS\n")
    os._exit(0)


def _stage_probe(cfg: dict) -> None:
    """Report who and where we are (the harness checks uid and the PID namespace)."""
    import os

    print(repr({"uid": os.getuid(), "gid": os.getgid(), "pid": os.getpid(), "groups": os.getgroups()}))


def _stage_main() -> None:
    """Entry of the sandboxed interpreter: rlimits first, then the role's program."""
    import ast
    import sys

    role, cfg = sys.argv[1], ast.literal_eval(sys.argv[2])
    _stage_limits(cfg["limits"])
    if hasattr(sys, "set_int_max_str_digits"):
        sys.set_int_max_str_digits(0)  # big ints cross as decimal text
    {"candidate": _stage_candidate, "judge": _stage_judge, "probe": _stage_probe}[role](cfg)


@functools.lru_cache(maxsize=1)
def _stage_source() -> str:
    """The source sent with ``-c``: the stage functions and the call of :func:`_stage_main`."""
    parts = [inspect.getsource(f) for f in (_literal, _stage_limits, _read_all, _stage_candidate, _stage_judge, _stage_probe, _stage_main)]
    return "\n\n".join(textwrap.dedent(p) for p in parts) + "\n_stage_main()\n"


# ---------------------------------------------------------------------------------------------
# What the judge forwards (decided here, from the source text, never by the candidate)


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


#: the tests' builtins stay the judge's own, whatever the solution defines
_BUILTIN_NAMES = frozenset(dir(builtins))


def _module_bindings(source: str) -> tuple[set[str], set[str]]:
    """(names ``source`` binds at module level, those bound by a plain ``import name``)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set(), set()
    plain_imports: set[str] = set()
    other: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                other.add(child.name)  # its body is another scope
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.asname:
                        other.add(alias.asname)
                    else:  # `import os.path` binds `os`
                        plain_imports.add(alias.name.split(".")[0])
            elif isinstance(child, ast.ImportFrom):
                other.update(a.asname or a.name for a in child.names if a.name != "*")
            elif isinstance(child, ast.Name) and isinstance(child.ctx, (ast.Store, ast.Del)):
                other.add(child.id)
            elif not isinstance(child, _SCOPES):
                visit(child)

    visit(tree)
    return other | plain_imports, plain_imports - other


def _names_used(source: str) -> set[str]:
    """Every name ``source`` reads anywhere (an over-approximation of its free names)."""
    try:
        return {n.id for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    except SyntaxError:
        return set()


def judge_spec(task: CodeTask) -> dict:
    """What the judge runs: setup, tests, and which names it forwards to the candidate.

    Forwarded: names the setup/tests read that the solution binds and the setup/tests do not
    (the trusted definition wins, as in MBPP's program order), plus ``entry_point``. A name the
    solution binds with a plain ``import math`` is imported by the judge itself instead. Builtins
    are never forwarded (only as the ``entry_point``): a solution that redefines ``abs`` or ``set``
    must not change what the tests compute with them.
    """
    solution_names, solution_modules = _module_bindings(task.solution)
    trusted_names = _module_bindings(task.setup)[0] | _module_bindings(task.tests)[0]
    wanted = (_names_used(task.setup) | _names_used(task.tests)) & solution_names
    wanted -= trusted_names | {task.entry_point} | _BUILTIN_NAMES
    return {"setup": task.setup, "tests": task.tests, "entry_point": task.entry_point,
            "modules": sorted(wanted & solution_modules), "proxied": sorted(wanted - solution_modules)}


# ---------------------------------------------------------------------------------------------
# Starting and stopping sandboxes


@dataclasses.dataclass(frozen=True)
class _Backend:
    isolation: str  # "bwrap" or "none"
    python: str  # the interpreter run inside (the harness's own, resolved)
    as_root: bool  # bwrap started by root, setpriv drops to a fresh uid


def _python_roots() -> list[str]:
    """Directories of the Python installation the sandbox needs, read-only (resolved, deduplicated)."""
    roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    exe = os.path.realpath(sys.executable)
    if not any(exe.startswith(r.rstrip("/") + "/") for r in roots):  # a venv made with --copies
        roots.add(os.path.realpath(sys.prefix))
    # nested roots are covered by their parent; /usr is bound anyway
    roots = {r for r in roots if not any(r != o and r.startswith(o.rstrip("/") + "/") for o in roots)}
    return sorted(r for r in roots if r != "/usr" and not r.startswith("/usr/"))


def _filesystem_args() -> list[str]:
    """bwrap arguments for the read-only view: /usr, the /bin and /lib* entries, Python."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):  # merged /usr: recreate the link
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    made: set[str] = set()
    for root in _python_roots():
        # bwrap would create the missing parents 0700 (root-only); make them traversable
        parent = os.path.dirname(root)
        parents = []
        while parent not in ("/", "") and parent not in made:
            parents.append(parent)
            parent = os.path.dirname(parent)
        for p in reversed(parents):
            args += ["--perms", "0755", "--dir", p]
            made.add(p)
        args += ["--ro-bind", root, root]
    return args


def _sandbox_env() -> dict[str, str]:
    """The whole environment of a sandboxed program (nothing is inherited)."""
    return {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
            "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1"}


def _python_args(backend: _Backend, role: str, cfg: dict) -> list[str]:
    """``python -S -s -B [-P] -c STAGES role cfg``: no site-packages, no bytecode files."""
    flags = ["-S", "-s", "-B"] + (["-P"] if sys.version_info >= (3, 11) else [])
    return [backend.python, *flags, "-c", _stage_source(), role, repr(cfg)]


def _bwrap_command(backend: _Backend, limits: Limits, info_fd: int, uid: int | None) -> list[str]:
    """The bwrap command line up to (and including) the uid switch; the Python command follows."""
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
           "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent", "--new-session", "--info-fd", str(info_fd)]
    if backend.as_root:
        # only what setpriv needs to drop to the sandbox uid; it then clears all of them
        cmd += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    else:
        cmd += ["--unshare-user", "--disable-userns"]
    cmd += _filesystem_args()
    cmd += ["--proc", "/proc", "--dev", "/dev",
            "--perms", "01777", "--size", str(limits.scratch_mb * 2**20), "--tmpfs", "/tmp",
            "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    for key, value in _sandbox_env().items():
        cmd += ["--setenv", key, value]
    cmd.append("--")
    if backend.as_root:
        setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
        cmd += [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs",
                "--inh-caps=-all", "--bounding-set=-all", "--"]
    return cmd


class _Sandbox:
    """One started sandbox: its bwrap (or plain) process and, for bwrap, a pidfd on the namespace's init."""

    def __init__(self, proc: subprocess.Popen, isolated: bool, info_fd: int | None = None, workdir: str | None = None) -> None:
        self.proc, self.isolated, self.info_fd, self.workdir = proc, isolated, info_fd, workdir
        self.init_pidfd: int | None = None

    def started(self) -> None:
        """Wait until bwrap has made the namespaces, and keep a pidfd on their init process."""
        if self.info_fd is None:
            return
        try:
            info = json.loads(_read_all(self.info_fd) or "{}")  # bwrap writes it, then closes it
            self.init_pidfd = os.pidfd_open(info["child-pid"]) if "child-pid" in info else None
        except (OSError, ValueError, AttributeError):  # AttributeError: no pidfd_open (Linux < 5.3)
            self.init_pidfd = None  # bwrap failed before making the namespace: nothing else to wait for
        finally:
            self.info_fd = None

    def kill(self) -> None:
        """Kill everything the sandbox started, and return only when it is gone."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.isolated:
                self.proc.kill()  # bwrap dies -> init gets SIGKILL (--die-with-parent) -> the namespace dies
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)  # isolation="none": the session (a setsid child escapes)
        self.proc.wait()
        self.started()  # (if not read yet) the info pipe is at EOF now
        if self.init_pidfd is not None:
            # the namespace's init exits only after every process in it: wait for that
            select.select([self.init_pidfd], [], [], 10.0)
            os.close(self.init_pidfd)
            self.init_pidfd = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None


def _start(backend: _Backend, limits: Limits, role: str, cfg: dict, pass_fds: Sequence[int], stdout: int, stderr: int) -> _Sandbox:
    """Start one sandboxed stage (call ``.started()`` on the result); ``cfg`` goes on its command line."""
    cfg = {**cfg, "limits": limits.for_stage()}
    if backend.isolation == "none":
        workdir = tempfile.mkdtemp(prefix="fda-unsandboxed-")
        proc = subprocess.Popen(_python_args(backend, role, cfg), cwd=workdir, env={**_sandbox_env(), "HOME": workdir, "TMPDIR": workdir},
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=pass_fds, start_new_session=True)
        return _Sandbox(proc, isolated=False, workdir=workdir)
    info_r, info_w = os.pipe()
    uid = SANDBOX_UID_RANGE[0] + secrets.randbelow(SANDBOX_UID_RANGE[1] - SANDBOX_UID_RANGE[0]) if backend.as_root else None
    try:
        cmd = _bwrap_command(backend, limits, info_w, uid) + _python_args(backend, role, cfg)
        proc = subprocess.Popen(cmd, env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                pass_fds=[*pass_fds, info_w], start_new_session=True)
    except BaseException:
        os.close(info_r)
        raise
    finally:
        os.close(info_w)
    return _Sandbox(proc, isolated=True, info_fd=info_r)


def _memfd(name: str, data: bytes = b"") -> int:
    """An anonymous in-memory file holding ``data``, positioned at its start."""
    fd = os.memfd_create(name)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _tail(fd: int, n: int = 4000) -> str:
    """The last ``n`` bytes written to memory file ``fd``."""
    size = os.fstat(fd).st_size
    return os.pread(fd, n, max(0, size - n)).decode("utf-8", "replace")


@functools.lru_cache(maxsize=None)
def _backend(isolation: str) -> _Backend:
    """The backend for ``isolation``, probed once per process with a real sandbox run."""
    if isolation not in ISOLATIONS:
        raise ValueError(f"unknown sandbox isolation {isolation!r}; valid: {', '.join(ISOLATIONS)}")
    backend = _Backend(isolation, os.path.realpath(sys.executable), os.geteuid() == 0)
    if isolation == "none":
        return backend
    if not shutil.which("bwrap"):
        raise SandboxUnavailableError(f"the code sandbox needs bwrap, which is not on PATH. {_INSTALL_HINT}")
    if backend.as_root and not (shutil.which("setpriv") or os.path.exists("/usr/bin/setpriv")):
        raise SandboxUnavailableError(f"the code sandbox needs setpriv (util-linux) when run as root. {_INSTALL_HINT}")
    _probe(backend)
    return backend


def _probe(backend: _Backend) -> None:
    """Run one real sandbox and check it is what we asked for; raise SandboxUnavailableError if not."""
    out, err = _memfd("probe-out"), _memfd("probe-err")
    try:
        box = _start(backend, Limits(timeout=30), "probe", {}, [], out, err)
        try:
            box.started()
            box.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        finally:
            box.kill()
        try:
            seen = ast.literal_eval(_tail(out).strip().splitlines()[-1])
        except (ValueError, SyntaxError, IndexError):
            seen = None
        expected_uid = None if backend.as_root else os.getuid()
        ok = (box.proc.returncode == 0 and isinstance(seen, dict) and seen.get("pid") == 2 and seen.get("uid") != 0
              and (expected_uid is None or seen.get("uid") == expected_uid))
        if not ok:
            detail = (_tail(err).strip() or _tail(out).strip() or f"exit status {box.proc.returncode}")[-800:]
            raise SandboxUnavailableError(f"a test run of bwrap failed ({detail}). {_INSTALL_HINT}")
    finally:
        os.close(out)
        os.close(err)


def check_sandbox(*, isolation: str = "bwrap", **limits: object) -> None:
    """Raise now if tasks could not be judged with these settings (call before long work)."""
    Limits(**limits)  # type: ignore[arg-type]  # unknown or non-positive settings fail here
    _backend(isolation)


@contextlib.contextmanager
def _fds() -> Iterator[list[int]]:
    """A list to put file descriptors in; all of them are closed on exit."""
    fds: list[int] = []
    try:
        yield fds
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def run_task(task: CodeTask, *, isolation: str = "bwrap", **limits: object) -> ExecResult:
    """Judge one task (see the module docstring). ``limits``: the fields of :class:`Limits`.

    Never raises for anything the solution does; raises :class:`SandboxUnavailableError` when the
    sandbox cannot run here.
    """
    lim = Limits(**limits)  # type: ignore[arg-type]
    backend = _backend(isolation)
    spec = judge_spec(task)
    with _fds() as keep, _fds() as child_ends:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        result_r, result_w = os.pipe()
        code = _memfd("solution", task.solution.encode("utf-8"))
        spec_fd = _memfd("spec", repr(spec).encode("utf-8"))
        child_ends += [request_r, request_w, reply_r, reply_w, result_w, code, spec_fd]
        outs = [_memfd(n) for n in ("cand-out", "cand-err", "judge-out", "judge-err")]
        keep += [result_r, *outs]
        t0 = time.perf_counter()
        candidate = _start(backend, lim, "candidate", {"code_fd": code, "request_fd": request_r, "reply_fd": reply_w},
                           [code, request_r, reply_w], outs[0], outs[1])
        try:
            judge = _start(backend, lim, "judge", {"spec_fd": spec_fd, "request_fd": request_w, "reply_fd": reply_r, "result_fd": result_w},
                           [spec_fd, request_w, reply_r, result_w], outs[2], outs[3])
        except BaseException:
            candidate.kill()
            raise
        try:  # both bwraps set up their namespaces at the same time
            candidate.started()
            judge.started()
        except BaseException:
            judge.kill()
            candidate.kill()
            raise
        for fd in child_ends:  # only the sandboxes hold them now: a dead peer reads as EOF
            os.close(fd)
        child_ends.clear()
        status = None
        try:
            judge.proc.wait(timeout=max(0.0, lim.timeout - (time.perf_counter() - t0)))
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            judge.kill()
            candidate.kill()
        seconds = time.perf_counter() - t0
        os.set_blocking(result_r, False)
        try:
            verdict = os.read(result_r, 64)
        except BlockingIOError:
            verdict = b""
        if status is None:
            status = "passed" if judge.proc.returncode == 0 and verdict == b"PASS\n" else "failed"
        judge_out = (_tail(outs[2], 1000).strip() + "\n" + _tail(outs[3])).strip()
        reason = judge_out.splitlines()[-1] if judge_out and status == "failed" else ("timeout" if status == "timeout" else "")
        return ExecResult(status == "passed", status, judge.proc.returncode, seconds, _tail(outs[0]), _tail(outs[1]), judge_out, reason)


def run_tasks(tasks: Sequence[CodeTask], *, workers: int | None = None, **kwargs: object) -> list[ExecResult]:
    """:func:`run_task` over many tasks, ``workers`` at a time (default: CPU count, max 8)."""
    check_sandbox(**kwargs)  # one clear error up front instead of one per task
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda t: run_task(t, **kwargs), tasks))  # type: ignore[arg-type]
