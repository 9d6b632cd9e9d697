"""The code sandbox: every attack fails, the harness and the host are unharmed, honest code passes.

Each test is one attack class. An attack is a :class:`CodeTask` whose solution (the untrusted side)
attacks; where the attack can be expressed as a question ("what error did that raise?") the judge's
tests assert the expected refusal, so a pass means "the isolation held", and the host side is
checked as well. The tests need bubblewrap (``apt-get install bubblewrap``) and namespaces; without
them every test here fails with the sandbox's own install hint, on purpose.
"""

from __future__ import annotations

import collections
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fda.bench.eval.llm import sandbox
from fda.bench.eval.llm.sandbox import CodeTask, SandboxUnavailableError, _literal, judge_spec, run_task, run_tasks

ROOT = os.geteuid() == 0
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\nassert add(-1, 1) == 0\n"
GOOD = CodeTask("def add(a, b):\n    return a + b\n", ADD_TESTS)


def _cmdlines() -> dict[int, str]:
    """Host processes and their command lines."""
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            out[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            pass
    return out


def _marked(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker`` (not this test process)."""
    return [pid for pid, cmd in _cmdlines().items() if marker in cmd and pid != os.getpid()]


def _unique_memory_mb() -> int:
    """A memory limit no other run uses: it appears in the sandboxed command line as a marker."""
    return 700 + (time.monotonic_ns() // 1000) % 300


def _marker(memory_mb: int) -> str:
    return f"'as': {memory_mb * 2**20}"


# --------------------------------------------------------------------------------------------
# What a sandboxed process is


FACTS = r'''
import os, resource, socket
def facts():
    status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
    limits = {name: resource.getrlimit(getattr(resource, "RLIMIT_" + name)) for name in ("AS", "NPROC", "FSIZE", "CPU", "CORE")}
    tmp = os.statvfs("/tmp")
    return {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "capeff": int(status["CapEff"], 16),
            "capbnd": int(status["CapBnd"], 16), "nnp": int(status["NoNewPrivs"]), "pid": os.getpid(),
            "pids": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()), "ifaces": [n for _, n in socket.if_nameindex()],
            "hostname": socket.gethostname(), "top": sorted(os.listdir("/")), "cwd": os.getcwd(), "env": dict(os.environ),
            "limits": limits, "tmp_bytes": tmp.f_blocks * tmp.f_frsize, "root_ro": not os.access("/", os.W_OK),
            "tmp_rw": os.access("/tmp", os.W_OK)}
'''


def test_sandboxed_process_is_unprivileged_and_alone():
    expected_env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
                    "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONNOUSERSITE": "1", "PWD": "/tmp"}  # PWD: bwrap --chdir
    tests = f"""
f = facts()
assert f["uid"] != 0 and f["euid"] != 0 and f["groups"] == [], f
assert f["capeff"] == 0 and f["nnp"] == 1, f
assert f["pid"] < 10 and max(f["pids"]) < 10, f            # its own PID namespace
assert f["ifaces"] == ["lo"] and f["hostname"] == "sandbox", f  # its own (empty) network and UTS namespaces
assert "etc" not in f["top"] and "home" not in f["top"] and "work" not in f["top"], f["top"]
assert f["root_ro"] and f["tmp_rw"] and f["cwd"] == "/tmp", f
assert f["env"] == {expected_env!r}, f["env"]
assert f["limits"]["AS"] == ({300 * 2**20}, {300 * 2**20}) and f["limits"]["NPROC"] == (7, 7), f["limits"]
assert f["limits"]["FSIZE"] == ({3 * 2**20}, {3 * 2**20}) and f["limits"]["CORE"] == (0, 0), f["limits"]
assert {5 * 2**20} * 0.9 < f["tmp_bytes"] <= {5 * 2**20}, f["tmp_bytes"]
"""
    r = run_task(CodeTask(FACTS, tests), timeout=10, memory_mb=300, max_procs=7, file_mb=3, scratch_mb=5)
    assert r.passed, r.judge
    if ROOT:  # setpriv also emptied the bounding set
        assert run_task(CodeTask(FACTS, "assert facts()['capbnd'] == 0\n"), timeout=10).passed


# --------------------------------------------------------------------------------------------
# Resource attacks


def test_infinite_loop_times_out():
    t0 = time.perf_counter()
    r = run_task(CodeTask("def add(a, b):\n    while True:\n        pass\n", ADD_TESTS), timeout=1.0)
    assert r.status == "timeout" and not r.passed
    assert time.perf_counter() - t0 < 4


@pytest.mark.parametrize("body", ["x = bytearray(16 * 1024**3)", "x = []\n    while True:\n        x.append(bytearray(50 * 1024**2))"])
def test_memory_bomb_fails_fast(body):
    t0 = time.perf_counter()
    r = run_task(CodeTask(f"def add(a, b):\n    {body}\n    return a + b\n", ADD_TESTS), timeout=8, memory_mb=400)
    assert r.status == "failed" and "MemoryError" in r.reason, r
    assert time.perf_counter() - t0 < 6


def test_fork_bomb_is_bounded_and_leaves_nothing():
    mem = _unique_memory_mb()
    bomb = "import os\nwhile True:\n    os.fork()\n"
    spinning = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    t0 = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:  # concurrently, like run_tasks; the neighbour gets time to spare
        bombs = [pool.submit(run_task, CodeTask(b + "def add(a, b):\n    return a + b\n", ADD_TESTS), timeout=3, memory_mb=mem, max_procs=8)
                 for b in (bomb, spinning)]
        neighbour = pool.submit(run_task, GOOD, timeout=20, memory_mb=mem, max_procs=8)
        results = [f.result() for f in (*bombs, neighbour)]
    assert [r.status for r in results] == ["failed", "timeout", "passed"], results  # the bombs do not starve a neighbour
    assert time.perf_counter() - t0 < 10
    assert _marked(_marker(mem)) == []  # every forked process is gone when run_tasks returns


def test_stdout_flood_is_capped_and_harness_memory_is_fine():
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    flood = "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n"
    r = run_task(CodeTask(flood + "def add(a, b):\n    return a + b\n", ADD_TESTS), timeout=5, file_mb=4)
    assert not r.passed and len(r.stdout) <= 4000
    # a reply line with no end: the judge stops reading at its limit
    reply_flood = "import __main__\n__main__._literal = lambda v, depth=0: 'x' * (2**21)\n" + "def add(a, b):\n    return a + b\n"
    r = run_task(CodeTask(reply_flood, ADD_TESTS), timeout=5, memory_mb=256)
    assert not r.passed
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 50 * 1024  # KiB: the harness read only tails


# --------------------------------------------------------------------------------------------
# File system


def _errno_of(call: str) -> str:
    """Solution source of ``attack(*args)``: runs ``call``, returns the error's name or 'ok'."""
    return ("import os, sqlite3\ndef attack(*args):\n    try:\n        " + call
            + "\n    except Exception as exc:\n        return type(exc).__name__\n    return 'ok'\n")


def test_reading_outside_the_scratch_dir_fails(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    tests = (f"assert attack({str(secret)!r}) == 'FileNotFoundError'\n"
             "assert attack('/etc/shadow') == 'FileNotFoundError'\n"
             "assert attack('/etc/passwd') == 'FileNotFoundError'\n"
             f"assert attack({str(Path(__file__).resolve())!r}) == 'FileNotFoundError'\n"
             "assert attack('/proc/1/environ') in ('PermissionError', 'FileNotFoundError')\n")
    r = run_task(CodeTask(_errno_of("return open(args[0]).read()[:20]"), tests), timeout=10)
    assert r.passed, r.judge


@pytest.mark.parametrize(
    "call,args",
    [
        ("open(args[0], 'w').write('gone')", ["victim"]),
        ("open(args[0], 'a').write('gone')", ["victim"]),
        ("sqlite3.connect(args[0]).execute('create table t (x)')", ["new.db"]),
        ("os.mkfifo(args[0])", ["fifo"]),
        ("os.symlink(args[0], args[1])", ["victim", "symlink"]),
        ("os.link(args[0], args[1])", ["victim", "hardlink"]),
        ("os.remove(args[0])", ["victim"]),
        ("os.rename(args[0], args[1])", ["victim", "renamed"]),
    ],
)
def test_writing_outside_the_scratch_dir_fails(call, args, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep")
    host = [str(tmp_path / a) for a in args]
    # the host path is not there at all; the Python installation is there, read-only
    prefix = os.path.realpath(sys.base_prefix)
    visible = [os.path.join(prefix, "lib", a) if a != "victim" else os.path.join(prefix, "lib", "os-victim") for a in args]
    if args[0] == "victim":  # an existing file of the installation
        visible[0] = os.path.realpath(os.__file__)
    tests = (f"assert attack(*{host!r}) in ('FileNotFoundError', 'OperationalError'), attack(*{host!r})\n"
             f"assert attack(*{visible!r}) in ('OSError', 'PermissionError', 'OperationalError'), attack(*{visible!r})\n"
             "assert attack('/x', '/y') in ('OSError', 'PermissionError', 'OperationalError', 'FileNotFoundError')\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    os_py = Path(os.path.realpath(os.__file__)).read_bytes()
    r = run_task(CodeTask(_errno_of(call), tests), timeout=10)
    assert r.passed, r.judge
    assert victim.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == before
    assert Path(os.path.realpath(os.__file__)).read_bytes() == os_py
    assert not any(os.path.lexists(p) for p in visible[1:] + ([] if args[0] == "victim" else visible[:1]))


def test_honest_programs_pass():
    solution = r'''
import collections, functools, hashlib, heapq, itertools, math, re, string, sys, tempfile, threading

def threads():
    out = []
    ts = [threading.Thread(target=lambda i=i: out.append(i * i)) for i in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    return sorted(out)

def deep(n):
    sys.setrecursionlimit(n + 1000)
    f = lambda k: 0 if k == 0 else 1 + f(k - 1)
    return f(n)

def memory():
    x = [0] * (100 * 2**20 // 8)  # 100 MB of pointers
    return len(x)

def files():
    open("mine.txt", "w").write("hello")
    with tempfile.NamedTemporaryFile("w+", delete=False) as fh:
        fh.write("world")
    return open("mine.txt").read() + " " + open(fh.name).read()

def stdlib():
    return [math.isqrt(17), re.findall(r"\d+", "a1b22"), list(itertools.accumulate([1, 2, 3])),
            collections.Counter("aab"), heapq.nsmallest(2, [5, 1, 3]), functools.reduce(lambda a, b: a * b, [1, 2, 3]),
            string.ascii_lowercase[:3], hashlib.sha256(b"x").hexdigest()[:8]]
'''
    tests = r'''
assert threads() == [0, 1, 4, 9]
assert deep(20000) == 20000
assert memory() == 100 * 2**20 // 8
assert files() == "hello world"
assert stdlib() == [4, ["1", "22"], [1, 3, 6], {"a": 2, "b": 1}, [1, 3], 6, "abc", "2d711642"]
'''
    r = run_task(CodeTask(solution, tests), timeout=20, memory_mb=1024)
    assert r.passed, (r.judge, r.stderr)


# --------------------------------------------------------------------------------------------
# Network, signals, processes that outlive the run


def test_network_is_unreachable(tmp_path):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.5)
    port = srv.getsockname()[1]
    abstract = b"\0fda-sandbox-test-%d" % os.getpid()
    usrv = socket.socket(socket.AF_UNIX)
    usrv.bind(abstract)
    usrv.listen(5)
    usrv.settimeout(0.5)
    solution = _errno_of("s = socket.socket(*args[1:])\n        s.settimeout(2)\n        s.connect(args[0])").replace("import os", "import os, socket")
    solution += "def dns(name):\n    try:\n        return socket.getaddrinfo(name, 80)[0][0]\n    except Exception as exc:\n        return type(exc).__name__\n"
    # bwrap brings up a loopback of the sandbox's own: 127.0.0.1 there has no listener
    tests = (f"assert attack(('127.0.0.1', {port})) == 'ConnectionRefusedError'\n"
             f"assert attack({abstract!r}, 1) == 'ConnectionRefusedError'\n"  # abstract sockets belong to the net namespace
             "assert dns('localhost') == 'gaierror' and dns('pypi.org') == 'gaierror'\n")
    try:
        r = run_task(CodeTask(solution, tests), timeout=10)
        assert r.passed, r.judge
        for s in (srv, usrv):
            with pytest.raises(socket.timeout):
                s.accept()  # nothing arrived
    finally:
        srv.close()
        usrv.close()


def test_signals_cannot_reach_the_harness_or_other_processes():
    sentinel = subprocess.Popen(["sleep", "60"])
    try:
        me, other = os.getpid(), sentinel.pid
        attacks = [
            f"os.kill({me}, signal.SIGKILL)",
            f"os.kill({other}, signal.SIGKILL)",
            "os.kill(os.getppid(), signal.SIGKILL)",
            f"signal.pidfd_send_signal(os.pidfd_open({me}), signal.SIGKILL)",
            f"signal.pidfd_send_signal(os.pidfd_open({other}), signal.SIGKILL)",
            "[os.kill(p, signal.SIGKILL) for p in range(1, 4000) if p != os.getpid() and p not in ()]",
            "os.killpg(os.getpgid(0), signal.SIGKILL)",
            "os.kill(-1, signal.SIGKILL)",
        ]
        tasks = [CodeTask("import os, signal\n" + a + "\ndef add(a, b):\n    return a - b\n", ADD_TESTS) for a in attacks]
        results = run_tasks([*tasks, GOOD, GOOD], workers=4, timeout=5)
        assert [r.passed for r in results] == [False] * len(attacks) + [True, True]
        assert sentinel.poll() is None  # the process the attacks were given is alive, and so are we
    finally:
        sentinel.kill()
        sentinel.wait()


def test_setsid_grandchild_dies_with_the_sandbox(tmp_path):
    mem = _unique_memory_mb()
    marker = f"fda-orphan-{os.getpid()}-{mem}"
    flag = tmp_path / "orphan-was-here"
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(5)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    # the grandchild leaves the session, outlives its parent and acts after the timeout
    script = (f"sleep 1.5; echo {marker} > {flag}; echo x > /tmp/after; "
              f"exec 3<>/dev/tcp/127.0.0.1/{port}; exec sleep 60")
    solution = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/bin/bash", ["bash", "-c", {script!r}])
    os._exit(0)
def add(a, b):
    time.sleep(60)
"""
    seen = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen.extend(_marked(marker))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        r = run_task(CodeTask(solution, ADD_TESTS), timeout=1.0, memory_mb=mem)
    finally:
        stop.set()
        watcher.join()
    assert r.status == "timeout"
    assert seen, "the grandchild never started: the test proves nothing"
    assert _marked(marker) == [] and _marked(_marker(mem)) == []  # gone when run_task returns
    time.sleep(1.5)  # past the grandchild's own wake-up time
    assert not flag.exists() and _marked(marker) == []
    with pytest.raises(socket.timeout):
        srv.accept()
    srv.close()


# --------------------------------------------------------------------------------------------
# Forging a pass: a wrong solution (add returns a - b) plus an attack on the verdict


FORGERIES = {
    "print_pass_and_exit0": "import os\nprint('PASS')\nprint('\\n' * 3 + 'PASS')\nos._exit(0)\n",
    "sys_exit0_before_tests": "import sys\nsys.exit(0)\n",
    "write_pass_to_every_fd": "import os\nfor fd in range(1024):\n    try:\n        os.write(fd, b'PASS\\n')\n    except OSError:\n        pass\n",
    "write_result_files": ("import os\nfor d in ('/tmp', '.', '/dev/shm', '/run'):\n    for n in ('result', 'PASS', 'verdict', 'result.json'):\n"
                           "        try:\n            open(os.path.join(d, n), 'w').write('PASS\\n')\n        except OSError:\n            pass\n"),
    "always_equal_object": "class Yes:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n",
    "always_equal_int": "class Yes(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n",
    "reply_true_always": "import __main__\n__main__._literal = lambda v, depth=0: \"('callable',)\" if v == ('callable',) else \"('ok', True)\"\n",
    "reply_code": "import __main__\n__main__._literal = lambda v, depth=0: \"__import__('os')._exit(0)\"\n",
    "reply_system_exit": "import __main__\n__main__._literal = lambda v, depth=0: \"('raise', 'SystemExit', '0')\"\n",
    "reply_stop_iteration": "def add(a, b):\n    raise StopIteration\n",
    "patch_builtins_and_modules": ("import builtins, sys, ast\nbuiltins.AssertionError = type('AssertionError', (Exception,), {})\n"
                                   "ast.literal_eval = lambda s: 3\nsys.modules['json'] = None\n"
                                   "builtins.__dict__['__import__'] = None\n"),
    "frames_and_main": ("import sys, gc\nf = sys._getframe()\nwhile f.f_back:\n    f = f.f_back\n"
                        "f.f_globals['load_error'] = None\nfor o in gc.get_objects():\n    if isinstance(o, dict) and 'max_message' in o:\n"
                        "        o['max_message'] = 0\n"),
    "kill_judge_guess": "import os, signal\nfor p in range(1, 2000):\n    try:\n        os.kill(p, signal.SIGSTOP)\n    except OSError:\n        pass\n",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_a_wrong_solution_cannot_forge_a_pass(name):
    attack = FORGERIES[name]
    wrong = "def add(a, b):\n    return a - b\n"
    if name.startswith("always_equal"):
        wrong = "def add(a, b):\n    return Yes(a - b)\n" if name == "always_equal_int" else "def add(a, b):\n    return Yes()\n"
    if name == "reply_stop_iteration":
        wrong = ""
    tests = ADD_TESTS + ("assert list(map(add, [1, 2], [3, 4])) == [4, 6]\n" if name == "reply_stop_iteration" else "")
    r = run_task(CodeTask(attack + wrong, tests), timeout=3)
    assert not r.passed and r.status in ("failed", "timeout"), r


def test_stop_iteration_cannot_truncate_a_test():
    """In one process, a candidate raising StopIteration inside ``list(map(...))`` ends the list early;
    the judge turns it into an error instead, so this test fails as it should."""
    r = run_task(CodeTask("def add(a, b):\n    raise StopIteration\n", "assert list(map(add, [1], [2])) == []\n"), timeout=5)
    assert not r.passed and "StopIteration" in r.reason


# --------------------------------------------------------------------------------------------
# What crosses between candidate and judge


def test_literals_round_trip_and_objects_do_not_cross():
    import ast

    Point = collections.namedtuple("Point", "x y")
    digits = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # as the stages do
    for value, back in [(0.1, 0.1), (-0.0, -0.0), (float("inf"), float("inf")), (float("-inf"), float("-inf")), (1 + 2j, 1 + 2j),
                        ((1,), (1,)), ([1, (2, 3)], [1, (2, 3)]), (set(), set()), ({1, 2}, {1, 2}), (frozenset({3}), {3}),
                        ({"a": [None, True]}, {"a": [None, True]}), (b"\x00", b"\x00"), (bytearray(b"ab"), b"ab"),
                        (10**5000, 10**5000), (collections.Counter("aab"), {"a": 2, "b": 1}), (Point(1, 2), (1, 2)),
                        (collections.OrderedDict(a=1), {"a": 1}), ("é\n'\"", "é\n'\"")]:
        decoded = ast.literal_eval(_literal(value))
        assert decoded == back and type(decoded) is type(back), (value, decoded)
    sys.set_int_max_str_digits(digits)
    assert str(ast.literal_eval(_literal(-0.0))) == "-0.0"
    for bad in [float("nan"), (i for i in range(2)), object(), range(3), collections.deque([1]), [1, [object()]], print]:
        with pytest.raises((TypeError, ValueError)):
            _literal(bad)
    deep: list = []
    deep.append(deep)
    with pytest.raises(ValueError):
        _literal(deep)


def test_generators_and_objects_fail_values_and_exceptions_cross():
    solution = ("import math\nPI = math.pi\ndef gen(n):\n    return (i for i in range(n))\n"
                "def obj():\n    return object()\ndef nums():\n    return [0.1 + 0.2, (1, 2), {3}, None, 1e999]\n"
                "def boom(x):\n    raise ValueError(f'bad {x}')\ndef mutate(xs):\n    xs.append(1)\n    return len(xs)\n")
    ok = run_task(CodeTask(solution, (
        "assert nums() == [0.30000000000000004, (1, 2), {3}, None, float('inf')] and nums() != [0.3, [1, 2], {3}, None, 1e999]\n"
        "assert abs(nums()[0] - 0.3) < 1e-9 and math.isclose(PI, 3.141592653589793)\n"
        "try:\n    boom(1)\nexcept ValueError as e:\n    assert str(e) == 'bad 1'\nelse:\n    raise AssertionError\n"
        "xs = []\nassert mutate(xs) == 1 and mutate(xs) == 1 and xs == []  # arguments cross by value\n")), timeout=5)
    assert ok.passed, ok.judge
    for test in ("assert list(gen(3)) == [0, 1, 2]\n", "assert obj() is not None\n", "assert nums() and mutate([object()])\n"):
        r = run_task(CodeTask(solution, test), timeout=5)
        assert not r.passed and "not plain data" in r.reason, (test, r.reason)


def test_names_that_cannot_cross_are_never_replaced_by_builtins():
    # `smallest` is bound by the solution: when it cannot be brought over, the judge must not find
    # another object of that name (a builtin name is never forwarded at all: see the tests below)
    conditional = "import re\nPATTERN = re.compile('a')\nif False:\n    def smallest(xs):\n        return 0\n"
    assert not run_task(CodeTask(conditional, "assert smallest([3, 1]) == 1\n"), timeout=5).passed
    # a top-level object the tests only shadow with a local does not matter
    local = "import re\nx = re.compile('a')\ndef f(v):\n    return v + 1\n"
    assert run_task(CodeTask(local, "def check():\n    x = 1\n    assert f(x) == 2\ncheck()\n"), timeout=5).passed


def test_judge_spec_forwards_only_the_solutions_names():
    he = CodeTask(solution="def enc(s): return s\ndef dec(s): return s\n", setup="def enc(s):\n    return s[::-1]\ndef dec(s):\n    '''stub'''\n",
                  tests="def check(candidate):\n    assert candidate(enc('ab')) == 'ab'\ncheck(dec)\n", entry_point="dec")
    spec = judge_spec(he)
    assert spec["proxied"] == [] and spec["modules"] == [] and spec["entry_point"] == "dec"  # enc: the prompt's own
    # the trusted helper is used: identity encoder + identity decoder (a forgery in one process) fails
    assert not run_task(he, timeout=5).passed
    mbpp = CodeTask(solution="import math\nimport heapq as hq\nfrom re import sub\nK = 3\ndef f(x): return x\nclass C: pass\n",
                    tests="assert f(1) == K\nassert math.isclose(1, 1)\nassert hq\nassert sorted([1]) == [1]\n", setup="def g(): pass\n")
    spec = judge_spec(mbpp)
    assert spec["proxied"] == ["K", "f", "hq"] and spec["modules"] == ["math"]
    assert judge_spec(CodeTask("x = (", "assert f(1)\n"))["proxied"] == []  # a solution that does not parse defines nothing


# --------------------------------------------------------------------------------------------
# No sandbox: a loud error, never a silent fallback


def test_missing_bwrap_is_a_clear_error(monkeypatch, tmp_path):
    sandbox._backend.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on PATH
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    try:
        with pytest.raises(SandboxUnavailableError, match=r"apt-get install bubblewrap.*isolation='none'"):
            run_task(GOOD, timeout=5)
        with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
            sandbox.check_sandbox()
    finally:
        sandbox._backend.cache_clear()


def test_broken_namespaces_are_a_clear_error(monkeypatch):
    sandbox._backend.cache_clear()
    real = sandbox._bwrap_command
    monkeypatch.setattr(sandbox, "_bwrap_command", lambda *a: [*real(*a)[:1], "--no-such-option", *real(*a)[1:]])
    try:
        with pytest.raises(SandboxUnavailableError, match=r"test run of bwrap failed.*no-such-option"):
            sandbox.check_sandbox()
    finally:
        sandbox._backend.cache_clear()


def test_unsandboxed_mode_must_be_asked_for_and_still_judges_apart():
    with pytest.raises(ValueError, match="unknown sandbox isolation"):
        run_task(GOOD, isolation="off")
    assert run_task(GOOD, isolation="none", timeout=5).passed
    assert not run_task(CodeTask("import os\nprint('PASS')\nos._exit(0)\n", ADD_TESTS), isolation="none", timeout=5).passed
    with pytest.raises(ValueError, match="timeout must be positive"):
        run_task(GOOD, timeout=0)
    with pytest.raises(TypeError):
        run_task(GOOD, timeot=3)


@pytest.mark.skipif(not ROOT or not os.path.exists("/usr/bin/python3"), reason="needs root (to become nobody) and /usr/bin/python3")
def test_unprivileged_mode_as_a_normal_user():
    """Started by a non-root user, bwrap adds a user namespace; the same checks hold."""
    if not os.access(sandbox.__file__, os.R_OK) or (os.stat(sandbox.__file__).st_mode & 0o004) == 0:
        pytest.skip("sandbox.py is not world-readable here")
    tmp_path = Path(tempfile.mkdtemp(prefix="fda-nobody-"))  # pytest's tmp_path is root-only
    script = tmp_path / "as_nobody.py"
    script.write_text(
        "import importlib.util, json, sys\n"
        f"spec = importlib.util.spec_from_file_location('sandbox_alone', {sandbox.__file__!r})\n"
        "sb = importlib.util.module_from_spec(spec); sys.modules['sandbox_alone'] = sb; spec.loader.exec_module(sb)\n"
        f"facts = sb.run_task(sb.CodeTask({FACTS!r}, 'f = facts()\\nassert f[\"uid\"] == 65534 and f[\"capeff\"] == 0 and f[\"nnp\"] == 1 and f[\"pid\"] < 10 and f[\"ifaces\"] == [\"lo\"], f\\n'), timeout=10)\n"
        f"good = sb.run_task(sb.CodeTask({GOOD.solution!r}, {ADD_TESTS!r}), timeout=10)\n"
        f"wrong = sb.run_task(sb.CodeTask('import os\\nprint(\"PASS\")\\nos._exit(0)\\n', {ADD_TESTS!r}), timeout=10)\n"
        "print(json.dumps([facts.passed, good.passed, wrong.passed, facts.judge]))\n")
    script.chmod(0o644)
    tmp_path.chmod(0o755)
    try:
        out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", str(script)],
                             capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"})
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
    if "test run of bwrap failed" in out.stderr:
        pytest.skip(f"unprivileged user namespaces are not allowed here: {out.stderr[-300:]}")
    facts, good, wrong, judge = json.loads(out.stdout.strip().splitlines()[-1])
    assert (facts, good, wrong) == (True, True, False), (judge, out.stderr[-2000:])


def test_harness_survives_a_killed_run(tmp_path):
    """The harness's own thread being interrupted mid-run (KeyboardInterrupt) leaves no sandbox behind."""
    mem = _unique_memory_mb()
    task = CodeTask("import time\ndef add(a, b):\n    time.sleep(60)\n", ADD_TESTS)
    # Python's own SIGINT handler for the test: in the full suite an earlier in-process test can
    # leave another one installed, and then the interrupt never arrives as KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.7, lambda: os.kill(os.getpid(), signal.SIGINT))
    try:
        timer.start()
        with pytest.raises(KeyboardInterrupt):
            run_task(task, timeout=30, memory_mb=mem)
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert _marked(_marker(mem)) == []


# --------------------------------------------------------------------------------------------
# Builtins the tests use stay the judge's own


@pytest.mark.parametrize("shadow,test", [
    ("def set(*a):\n    return 0\n", "assert set(f([1, 2])) == set([2, 1])\n"),
    ("def abs(x):\n    return 0\n", "assert abs(len(f([3])) - 1) == abs(0)\nassert abs(len(f([3]))) == abs(1)\n"),
    ("def sorted(*a, **k):\n    return []\n", "assert sorted(f([2, 1])) == sorted([1, 2])\n"),
])
def test_a_solution_cannot_redefine_the_builtins_the_tests_use(shadow, test):
    """A wrong ``f`` plus a redefined builtin that makes both sides of the assert equal must fail."""
    task = CodeTask(solution=shadow + "\ndef f(xs):\n    return []\n", tests=test)
    assert judge_spec(task)["proxied"] == ["f"]
    assert not run_task(task).passed


def test_an_mbpp_function_named_like_a_builtin_is_still_tested():
    """MBPP 126 tests a function called ``sum``: as the entry point it is forwarded."""
    from fda.bench.eval.llm.code_tasks import mbpp_entry_point, mbpp_task

    example = {"task_id": 126, "code": "def sum(a, b):\n    return sum_of_divisors(a, b)\n",
               "test_list": ["assert sum(10, 15) == 6", "assert sum(4, 6) == 3"]}
    assert mbpp_entry_point(example) == "sum"
    good = "import math\ndef sum(a, b):\n    return builtins_sum(d for d in range(1, math.gcd(a, b) + 1) if a % d == 0 and b % d == 0)\n" \
           "import builtins\nbuiltins_sum = builtins.sum\n"
    assert run_task(mbpp_task(example, good)).passed
    assert not run_task(mbpp_task(example, "def sum(a, b):\n    return 0\n")).passed
