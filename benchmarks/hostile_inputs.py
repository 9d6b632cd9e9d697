"""How fda-bench treats hostile or careless input: a repeatable, mechanically classified measurement.

    .venv/bin/python benchmarks/hostile_inputs.py                  # every class (a few minutes on 2 cores)
    .venv/bin/python benchmarks/hostile_inputs.py --only sandbox   # one class (comma-separated for several)
    .venv/bin/python benchmarks/hostile_inputs.py --list           # the cases, without running them

Writes ``benchmarks/results/hostile_inputs.{md,json}`` (``--out PREFIX`` elsewhere; a run with
``--only`` writes ``PREFIX-<classes>.{md,json}`` so it never overwrites the full table) and prints
one table per class. Everything happens in temporary directories: tiny models and tensors,
``snakemake -n`` dry runs with ``--directory`` set to a temporary directory (so the repository's
``.snakemake/`` is never touched), sandboxes with short timeouts.

Each case is an input that a careful tool must refuse (a *hostile* case), or, in a few places, a
legitimate input that it must accept (a *control* case, marked ``[control]`` in the case list).
The outcome is decided mechanically, by these rules and nothing else:

Entry point ``api`` (an in-process call of the library):

* **clear**: the call raised an exception that is one of the project's errors -- its class is
  defined in a module of ``fda`` or ``baselines`` (``MergeInputError``, ``HyperparameterError``,
  ``NonFiniteError``, ``FDAConfigError``, ``CheckpointError``, ``ConfigError``, ...), or it is a
  builtin exception (``ValueError``, ``IndexError``, ...) raised deliberately by the project: the
  innermost traceback frame lies in ``fda/`` or ``baselines/`` and its source line is a ``raise``
  statement (a ``KeyError`` from a dict look-up there does not count) -- **and** its message contains
  every expected name of the case (case-insensitive; an entry written ``a|b`` matches either):
  the key, file, hyperparameter, field or the valid values the user needs.
* **unclear**: any other exception (``KeyError``, a torch ``RuntimeError``, an error raised inside a
  third-party library, a project error whose message lacks an expected name), or a hang past the
  case's time limit.
* **silent**: no exception (for a hostile case: whatever was returned or written is wrong).

Entry point ``cli`` (``fda-bench ...`` as a subprocess) and ``snakemake`` (``snakemake -n ...``):

* **clear**: exit status != 0, no Python traceback (``Traceback (most recent call last)``) in the
  output, and the output (stderr + stdout) contains every expected name.
* **unclear**: exit status != 0 otherwise (a traceback, or no expected name), or killed by the
  case's time limit.
* **silent**: exit status 0 (the tool went ahead: wrote a file, planned jobs).

Control cases (``[control]``, any entry point): **clear** = it succeeded and its result is the
right one (checked by the case); **unclear** = it was refused or failed (a false alarm).

Entry point ``sandbox`` (generated code judged by ``fda.bench.eval.llm.sandbox``):

* **escaped**: the side effect the attack aims at happened (a host file read into the verdict,
  written, created or linked; bytes reached a listener of the harness; the harness or a sentinel
  process received a signal; a process of the task was still alive after the call returned), or a
  program that does not solve its task was scored as passed.
* **clear**: the attack was stopped (no side effect) and the program was scored as not passed.
* **unclear**: no side effect, but the harness itself raised, or hung past the case's limit.
* Legitimate programs (controls) must pass: clear if they do, unclear if not.

A case that escapes also counts as escaped when the same call raised: the side effect decides.
Entry point ``io`` cases are ``api`` cases; a malicious pickle that runs code on load is *escaped*.

Caches (anchors of ``fda-construct``, adapted blocks of ``fda-adapt``, the method's code hash,
``stream_merge(resume=True)``): after a change of the method's code, its settings or its inputs,
**silent** = the old result was answered (the job logged a cache hit, or the returned tensors
equal the old settings' instead of a fresh run's), **clear** = it was recomputed. Controls: with
nothing changed, or only the harness (``fda/bench``) edited, the cache must be reused.

Classes (``--only``): baselines, fda, io, cli, snakemake, caches, sandbox. ``--list`` prints every
case. ``--self-check`` runs the sandbox attacks that cannot hurt the host with
``isolation="none"`` (no isolation at all), which shows that each side-effect detector fires when
nothing stops the attack; it is not part of the default run.

The per-program cost of the sandbox is measured too: the median wall time of a trivial passing
program over 20 runs (``run_task`` with the default isolation), after one warm-up run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import pickle
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
os.environ.update(OFFLINE)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(REPO))  # run from a checkout without `pip install -e .` too

CLASSES = ("baselines", "fda", "io", "cli", "snakemake", "caches", "sandbox")
CLASS_TITLES = {
    "baselines": "baselines API (`baselines.merge`)",
    "fda": "FDA API (`fda.*`, `FDAConfig`)",
    "io": "checkpoints / io (`fda.io`)",
    "cli": "CLI (`fda-bench ...`)",
    "snakemake": "Snakemake (`snakemake -n`)",
    "caches": "caches (anchors, blocks)",
    "sandbox": "code sandbox (generated code)",
}
OUTCOMES = ("clear", "unclear", "silent", "escaped")
PROJECT_DIRS = (REPO / "fda", REPO / "baselines")
TRACEBACK = "Traceback (most recent call last)"


# ================================================================================================
# cases and outcomes


@dataclass
class Case:
    cls: str
    name: str
    entry: str  # api | io | cli | snakemake | sandbox
    run: Callable[[Path], Verdict]
    control: bool = False
    note: str = ""  # what a reader needs to know about the case (e.g. "contrived")
    dangerous: bool = False  # sandbox attacks run only against a namespaced sandbox (they could hurt the host)


@dataclass
class Verdict:
    outcome: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    cls: str
    name: str
    entry: str
    control: bool
    outcome: str
    message: str
    seconds: float
    detail: dict[str, Any]
    note: str = ""


class CaseTimeout(Exception):
    """Raised in the main thread by SIGALRM when an in-process case runs past its limit."""


def first_line(text: str, limit: int = 240) -> str:
    """The first non-blank line; a line ending with ':' takes the next one along (e.g. 'invalid workflow config:')."""
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if not lines:
        return ""
    out = lines[0]
    if out.endswith(":") and len(lines) > 1:
        out = f"{out} {lines[1]}"
    return out if len(out) <= limit else out[: limit - 1] + "…"


def _names_found(text: str, expect: Sequence[str]) -> tuple[bool, list[str]]:
    low = text.lower()
    missing = [e for e in expect if not any(alt.lower() in low for alt in e.split("|"))]
    return not missing, missing


def _innermost_frame_file(err: BaseException) -> str:
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last.tb_frame.f_code.co_filename if last is not None else ""


def _innermost_line(err: BaseException) -> str:
    import linecache

    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return linecache.getline(last.tb_frame.f_code.co_filename, last.tb_lineno).strip() if last is not None else ""


def is_project_error(err: BaseException) -> bool:
    """Defined in fda/baselines, or a builtin exception raised deliberately by the project's own
    source: the innermost traceback frame lies in fda/ or baselines/ and its line is a ``raise``
    statement (a ``KeyError`` of a dict look-up there does not count)."""
    mod = type(err).__module__.split(".")[0]
    if mod in ("fda", "baselines"):
        return True
    if type(err).__module__ == "builtins":
        where = Path(_innermost_frame_file(err)).resolve()
        in_project = any(str(where).startswith(str(d) + os.sep) for d in PROJECT_DIRS)
        return in_project and _innermost_line(err).startswith("raise")
    return False


def judge_exception(err: BaseException, expect: Sequence[str]) -> Verdict:
    msg = f"{type(err).__name__}: {err}"
    detail = {"exception": f"{type(err).__module__}.{type(err).__name__}"}
    if isinstance(err, CaseTimeout):
        return Verdict("unclear", "hung past the case's time limit", detail)
    found, missing = _names_found(str(err), expect)
    if is_project_error(err) and found:
        return Verdict("clear", first_line(msg), detail)
    if missing:
        detail["missing_names"] = missing
    if not is_project_error(err):
        detail["why"] = "not a project error" + (f" (raised in {Path(_innermost_frame_file(err)).name})" if _innermost_frame_file(err) else "")
    return Verdict("unclear", first_line(msg), detail)


@contextlib.contextmanager
def time_limit(seconds: float):
    if threading.current_thread() is not threading.main_thread() or seconds <= 0:
        yield
        return

    def alarm(signum, frame):
        raise CaseTimeout(f"ran past {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def api(call: Callable[[Path], Any], expect: Sequence[str] = (), *, check: Callable[[Any, Path], str | None] | None = None,
        escaped: Callable[[Path], str | None] | None = None, limit: float = 120) -> Callable[[Path], Verdict]:
    """An in-process case. ``call(tmp)`` is the hostile call; ``expect`` the names a clear error holds.

    ``check(result, tmp)`` (controls): None if the returned value is right, else why not.
    ``escaped(tmp)``: a description of the side effect if the attack succeeded, else None.
    """

    def run(tmp: Path) -> Verdict:
        try:
            with time_limit(limit):
                value = call(tmp)
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt):
                raise
            v = judge_exception(err, expect)
            v.detail.setdefault("raised", True)
        else:
            if check is not None:
                why = check(value, tmp)
                v = Verdict("clear", "ok" if why is None else why) if why is None else Verdict("silent", why)
            else:
                v = Verdict("silent", f"no error; returned {_describe(value)}")
        if escaped is not None:
            side = escaped(tmp)
            if side:
                return Verdict("escaped", side, {**v.detail, "would_be": v.outcome})
        return v

    return run


def control(call: Callable[[Path], Any], check: Callable[[Any, Path], str | None] | None = None, limit: float = 120) -> Callable[[Path], Verdict]:
    """A legitimate call that must succeed (clear) with a right result; an error is a false alarm (unclear)."""

    def run(tmp: Path) -> Verdict:
        try:
            with time_limit(limit):
                value = call(tmp)
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt):
                raise
            return Verdict("unclear", "refused a legitimate input: " + first_line(f"{type(err).__name__}: {err}"),
                           {"exception": type(err).__name__})
        why = check(value, tmp) if check is not None else None
        return Verdict("clear", "accepted, result right") if why is None else Verdict("unclear", f"accepted, but {why}")

    return run


def _describe(value: Any) -> str:
    try:
        import torch

        if isinstance(value, dict):
            tensors = [v for v in value.values() if isinstance(v, torch.Tensor)]
            nonfinite = sum(1 for v in tensors if v.is_floating_point() and not bool(torch.isfinite(v).all()))
            return f"a dict of {len(value)} entries ({nonfinite} non-finite tensors)"
        if isinstance(value, torch.Tensor):
            return f"a tensor {tuple(value.shape)} ({'finite' if bool(torch.isfinite(value).all()) else 'NON-FINITE'})"
        if isinstance(value, (list, tuple)):
            return f"a {type(value).__name__} of {len(value)}"
    except Exception:  # noqa: BLE001, S110 - a description only; fall back to repr
        pass
    text = repr(value)
    return text if len(text) < 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------ processes


def _bin(name: str) -> list[str]:
    for d in (REPO / ".venv" / "bin", Path(sys.executable).parent):
        if (d / name).exists():
            return [str(d / name)]
    found = shutil.which(name)
    if found:
        return [found]
    if name == "fda-bench":
        return [sys.executable, "-m", "fda.bench.cli"]
    raise SystemExit(f"{name} not found: run inside the project's venv (make venv)")


def _env() -> dict[str, str]:
    env = {**os.environ, **OFFLINE}
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def process(argv: Sequence[str], expect: Sequence[str] = (), *, cwd: Path | None = None, limit: float = 120,
            check: Callable[[subprocess.CompletedProcess, Path], str | None] | None = None,
            is_control: bool = False, before: Callable[[Path], None] | None = None) -> Callable[[Path], Verdict]:
    """A subprocess case (cli / snakemake). ``argv`` may contain ``{tmp}`` (the case's directory)."""

    def run(tmp: Path) -> Verdict:
        if before is not None:
            before(tmp)
        args = [a.replace("{tmp}", str(tmp)) for a in argv]
        try:
            cp = subprocess.run(args, check=False, cwd=cwd or tmp, env=_env(), capture_output=True, text=True, timeout=limit,
                                stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return Verdict("unclear", f"killed after {limit:.0f} s (hung)", {"rc": None})
        out = (cp.stderr or "") + "\n" + (cp.stdout or "")
        detail: dict[str, Any] = {"rc": cp.returncode}
        if is_control:
            if cp.returncode != 0:
                return Verdict("unclear", "refused a legitimate input: " + _process_message(out), detail)
            why = check(cp, tmp) if check is not None else None
            return Verdict("clear", "accepted, result right") if why is None else Verdict("unclear", f"accepted, but {why}", detail)
        if cp.returncode == 0:
            why = check(cp, tmp) if check is not None else None
            return Verdict("silent", why or ("exit 0: " + (first_line(cp.stdout) or first_line(cp.stderr) or "no output")), detail)
        found, missing = _names_found(out, expect)
        if TRACEBACK in out:
            detail["why"] = "Python traceback in the output"
            return Verdict("unclear", _process_message(out), detail)
        if not found:
            detail["missing_names"] = missing
            return Verdict("unclear", _process_message(out), detail)
        return Verdict("clear", _process_message(out), detail)

    return run


_NOISE = ("[fda-bench]", "usage:", "Assuming unrestricted", "Building DAG", "Config file", "Host:", "Provided cores",
          "Rules claiming", "Select jobs", "Job stats", "Nothing to be done", "Using shell", "  ", "Snakemake version",
          "User:", "Python version", "Command:", "Snakefile:", "Base directory", "Run directory", "Working directory",
          "Config MD5", "Full Traceback", "Complete log", "WorkflowError:", "Exiting because")


def _process_message(out: str) -> str:
    """The error line a user reads: the exception line of a traceback, else the first informative line."""
    lines = [ln.rstrip() for ln in out.splitlines() if ln.strip()]
    if TRACEBACK in out:
        tb_end = [ln for ln in lines if ln and not ln.startswith((" ", "Traceback", "During handling", "The above exception"))]
        exc = [ln for ln in tb_end if ":" in ln and not ln.startswith("[fda-bench]")]
        if exc:
            return first_line(exc[-1])
    for i, ln in enumerate(lines):
        low = ln.lower()
        if ("error" in low or "exception" in low) and not ln.startswith(("usage:", "[fda-bench]")):
            msg, j = ln.strip(), i + 1
            while msg.endswith(":") and j < len(lines) and j <= i + 3:  # "Error:" / "WorkflowError:" headers
                msg, j = f"{msg} {lines[j].strip()}", j + 1
            return first_line(msg, 300)
    for ln in lines:
        if not ln.startswith(_NOISE):
            return first_line(ln)
    return first_line(lines[0]) if lines else "(no output)"


# ================================================================================================
# tiny models and state dicts (copied from tests/layer_method/test_fda_models.py: the benchmark imports no tests)

D = 32


def tiny_bert():
    import transformers

    transformers.logging.set_verbosity_error()
    cfg = transformers.BertConfig(hidden_size=D, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                  vocab_size=50, max_position_embeddings=16)
    return transformers.BertModel(cfg).eval()


def tiny_clip():
    import transformers

    transformers.logging.set_verbosity_error()
    vcfg = transformers.CLIPVisionConfig(hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                         image_size=12, patch_size=4, projection_dim=16)
    return transformers.CLIPVisionModel(vcfg).eval()


def states(model, n_experts: int, scale: float = 0.05, seed: int = 1):
    """(pretrained, experts): the model's tensors plus random task vectors of relative size ``scale``."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    pre = {k: v.detach().clone() for k, v in model.state_dict().items()}
    experts = []
    for _ in range(n_experts):
        ex = {}
        for k, v in pre.items():
            ex[k] = v + scale * torch.randn(v.shape, generator=gen) * (v.abs().mean() + 1e-2) if v.is_floating_point() else v.clone()
        experts.append(ex)
    return pre, experts


def poisoned(state: dict, key: str, value: float = math.nan) -> dict:
    out = dict(state)
    out[key] = state[key].clone()
    out[key].view(-1)[0] = value
    return out


def small_cfg(family: str = "bert", init: str = "pretrained", **kw):
    from fda import FDAConfig

    base = {"n_anchors": 8, "tokens": 3 if family == "bert" else None, "construct_steps": 3, "adapt_epochs": 3,
            "adapt_batch": 4, "progress": False}
    return FDAConfig.for_family(family, init=init, **{**base, **kw})


_CACHE: dict[str, Any] = {}


def bert():
    """(model, pretrained, [expert0, expert1]) of a tiny 2-block BERT, built once."""
    if "bert" not in _CACHE:
        import torch

        torch.manual_seed(0)
        model = tiny_bert()
        pre, experts = states(model, 2)
        _CACHE["bert"] = (model, pre, experts)
    return _CACHE["bert"]


def sd(seed: int = 0) -> dict:
    """A small plain state dict: two matrices, a bias, an integer buffer."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return {"enc.0.weight": torch.randn(8, 6, generator=g), "enc.0.bias": torch.randn(8, generator=g),
            "enc.1.weight": torch.randn(4, 8, generator=g), "enc.ids": torch.arange(4)}


def base_and_experts(n: int = 2):
    pre = sd(0)
    return pre, [{k: (v + 0.05 * sd(i + 1)[k] if v.is_floating_point() else v.clone()) for k, v in pre.items()} for i in range(n)]


# ================================================================================================
# class: baselines


def baselines_cases() -> list[Case]:
    import baselines

    def merge(method: str, mutate: Callable[[dict, list], tuple] | None = None, **hp):
        def call(tmp: Path):
            pre, exps = base_and_experts()
            if mutate is not None:
                pre, exps = mutate(pre, exps)
            return baselines.merge(method, pre, exps, **hp)

        return call

    def with_expert(i: int, fn: Callable[[dict], dict]):
        return lambda pre, exps: (pre, [fn(e) if j == i else e for j, e in enumerate(exps)])

    def drop(key):
        return lambda e: {k: v for k, v in e.items() if k != key}

    def add(key, value_fn):
        return lambda e: {**e, key: value_fn()}

    def reshape(key):
        return lambda e: {**e, key: e[key].reshape(-1)}

    def retype(key, dtype_name):
        import torch

        return lambda e: {**e, key: e[key].to(getattr(torch, dtype_name))}

    import torch

    C = []

    def case(name, run, control_=False, note=""):
        C.append(Case("baselines", name, "api", run, control_, note))

    # -- inputs
    case("expert missing a key", api(merge("ta", with_expert(1, drop("enc.1.weight"))), ["expert 1", "enc.1.weight"]))
    case("expert with an extra key (a head)", api(merge("tsvm", with_expert(0, add("head.weight", lambda: torch.zeros(3, 8)))), ["expert 0", "head.weight"]))
    case("expert tensor of another shape", api(merge("ta", with_expert(1, reshape("enc.0.weight"))), ["expert 1", "enc.0.weight", "shape"]))
    case("expert tensor of another dtype (float16)", api(merge("wudi", with_expert(0, retype("enc.0.weight", "float16")), steps=2), ["expert 0", "enc.0.weight", "float16"]))
    case("pretrained and experts all float16 except one bfloat16 key", api(merge("ta", lambda p, e: ({k: (v.half() if v.is_floating_point() else v) for k, v in p.items()}, [{k: (v.half() if v.is_floating_point() else v) for k, v in x.items()} | ({"enc.0.bias": x["enc.0.bias"].bfloat16()} if j == 1 else {}) for j, x in enumerate(e)])), ["expert 1", "enc.0.bias", "bfloat16"]))
    case("NaN in an expert", api(merge("ta", with_expert(1, lambda e: poisoned(e, "enc.0.weight"))), ["expert 1", "enc.0.weight", "nan"]))
    case("+inf in an expert (tsvm)", api(merge("tsvm", with_expert(0, lambda e: poisoned(e, "enc.1.weight", math.inf))), ["expert 0", "enc.1.weight", "inf"]))
    case("NaN in the pretrained model", api(merge("average", lambda p, e: (poisoned(p, "enc.0.bias"), e)), ["pretrained", "enc.0.bias", "nan"]))
    case("-inf in an expert (ties)", api(merge("ties", with_expert(1, lambda e: poisoned(e, "enc.0.weight", -math.inf))), ["expert 1", "enc.0.weight", "inf"]))
    case("no experts (empty list)", api(merge("ta", lambda p, e: (p, [])), ["expert"]))
    case("a single state dict instead of a list", api(lambda tmp: baselines.merge("ta", base_and_experts()[0], base_and_experts()[1][0]), ["list"]))
    case("experts as a generator", api(lambda tmp: baselines.merge("ta", base_and_experts()[0], (e for e in base_and_experts()[1])), ["list"]))
    case("a value that is not a tensor (list)", api(merge("ta", with_expert(0, lambda e: {**e, "enc.0.bias": e["enc.0.bias"].tolist()})), ["expert 0", "enc.0.bias", "tensor"]))
    case("empty pretrained state dict", api(lambda tmp: baselines.merge("ta", {}, [{}]), ["pretrained|empty"]))
    case("names: fewer names than experts", api(lambda tmp: baselines.merge("ta", *base_and_experts(), names=["a"]), ["names"]))
    # -- method and hyperparameters
    case("unknown method ('tsv')", api(merge("tsv"), ["'tsv'", "tsvm"]))
    case("method name with other case ('TA')", api(merge("TA"), ["'TA'", "ta"]))
    case("unknown hyperparameter ('lamda')", api(merge("ta", lamda=0.3), ["lamda", "alpha"]))
    case("hyperparameter of another method (ties topk to ta)", api(merge("ta", topk=20.0), ["topk", "alpha"]))
    case("wrong type: alpha='0.3' (str)", api(merge("ta", alpha="0.3"), ["alpha", "float"]))
    case("wrong type: alpha=True (bool)", api(merge("tsvm", alpha=True), ["alpha", "float"]))
    case("wrong type: steps=2.5 (float)", api(merge("wudi", steps=2.5), ["steps", "int"]))
    case("wrong type: exclude='classifier' (str, not list)", api(merge("ta", exclude="classifier"), ["exclude"]))
    case("invalid regex in exclude", api(merge("ta", exclude=["enc.(0"]), ["exclude|regex|pattern", "enc.(0"]))
    case("unknown coverage preset", api(merge("tsvm", coverage="everything"), ["coverage|everything", "fda-vision"]))
    case("unknown merge_func ('median')", api(merge("ties", merge_func="median"), ["merge_func", "mean"]))
    case("unknown compute dtype ('float16')", api(merge("ta", dtype="float16"), ["dtype", "float32"]))
    case("device that is not a device ('gpu0')", api(merge("ta", device="gpu0"), ["device", "gpu0"]))
    case("alpha=1e300 (overflow, ta)", api(merge("ta", alpha=1e300), ["alpha"]))
    case("alpha=1e300 (overflow, tsvm)", api(merge("tsvm", alpha=1e300), ["alpha"]))
    case("alpha=1e300 (overflow, ties)", api(merge("ties", alpha=1e300), ["alpha"]))
    case("alpha=1e300 (overflow, wudi)", api(merge("wudi", alpha=1e300, steps=2), ["alpha"]))
    case("alpha=nan", api(merge("ta", alpha=math.nan), ["alpha"]))
    case("alpha=inf", api(merge("tsvm", alpha=math.inf), ["alpha"]))
    case("wudi lr=1e30 (diverges)", api(merge("wudi", lr=1e30, steps=5), ["lr"]))
    case("wudi lr=0", api(merge("wudi", lr=0.0, steps=2), ["lr"]))
    case("wudi lr=-1e-5", api(merge("wudi", lr=-1e-5, steps=2), ["lr"]))
    case("wudi steps=-1", api(merge("wudi", steps=-1), ["steps"]))
    case("ties topk=0", api(merge("ties", topk=0.0), ["topk"]))
    case("ties topk=-5", api(merge("ties", topk=-5.0), ["topk"]))
    case("ties topk=150 (over 100 %)", api(merge("ties", topk=150.0), ["topk"]))
    case("float16 inputs, alpha=1e6 (overflows the stored dtype)", api(merge("ta", lambda p, e: ({k: (v.half() if v.is_floating_point() else v) for k, v in p.items()}, [{k: (v.half() if v.is_floating_point() else v) for k, v in x.items()} for x in e]), alpha=1e6), ["alpha", "float16"]))
    # -- controls
    case("TA of valid inputs equals θ0 + α Σ τ", control(merge("ta", alpha=0.5), lambda out, tmp: _check_ta(out, 0.5)), True)
    case("integer buffers that differ between experts are copied from θ0", control(merge("average", with_expert(1, lambda e: {**e, "enc.ids": e["enc.ids"] + 1})), lambda out, tmp: None if bool((out["enc.ids"] == torch.arange(4)).all()) else "ids not θ0's"), True)
    return C


def _check_ta(out: dict, alpha: float) -> str | None:
    import torch

    pre, exps = base_and_experts()
    for k, v in pre.items():
        if not v.is_floating_point():
            continue
        want = v + alpha * sum(e[k] - v for e in exps)
        if not torch.allclose(out[k], want, atol=1e-6):
            return f"key {k} differs from θ0 + α Σ τ"
    return None


# ================================================================================================
# class: fda


def fda_cases() -> list[Case]:
    import torch

    import fda
    from fda import FDAConfig

    C = []

    def case(name, run, control_=False, note=""):
        C.append(Case("fda", name, "api", run, control_, note))

    def cfg(**kw):
        return lambda tmp: FDAConfig(**kw)

    def fam(*a, **kw):
        return lambda tmp: FDAConfig.for_family(*a, **kw)

    # -- FDAConfig
    case("FDAConfig(n_anchors='64') (str)", api(cfg(n_anchors="64"), ["n_anchors", "int"]))
    case("FDAConfig(n_anchors=0)", api(cfg(n_anchors=0), ["n_anchors"]))
    case("FDAConfig(adapt_batch=-8)", api(cfg(adapt_batch=-8), ["adapt_batch"]))
    case("FDAConfig(construct_steps=-1)", api(cfg(construct_steps=-1), ["construct_steps"]))
    case("FDAConfig(tokens=0)", api(cfg(tokens=0), ["tokens"]))
    case("FDAConfig(adapt_epochs=2.5) (float)", api(cfg(adapt_epochs=2.5), ["adapt_epochs", "int"]))
    case("FDAConfig(seed='0') (str)", api(cfg(seed="0"), ["seed"]))
    case("FDAConfig(construct_lr=-1e-2)", api(cfg(construct_lr=-1e-2), ["construct_lr"]))
    case("FDAConfig(adapt_lr=nan)", api(cfg(adapt_lr=math.nan), ["adapt_lr"]))
    case("FDAConfig(sigma=inf)", api(cfg(sigma=math.inf), ["sigma"]))
    case("FDAConfig(progress='no') (str)", api(cfg(progress="no"), ["progress"]))
    case("FDAConfig(n_anchorz=8) (unknown field)", api(cfg(n_anchorz=8), ["n_anchorz", "n_anchors"]))
    case("FDAConfig(lr=1e-3) (unknown field)", api(cfg(lr=1e-3), ["'lr'", "adapt_lr"]))
    case("FDAConfig(similarity='cosine') (unknown enum)", api(cfg(similarity="cosine"), ["similarity", "cos"]))
    case("FDAConfig(adapt_loss='huber')", api(cfg(adapt_loss="huber"), ["adapt_loss", "mse"]))
    case("FDAConfig(batching='gpu')", api(cfg(batching="gpu"), ["batching", "vmap"]))
    case("FDAConfig(qkv_layout='joint')", api(cfg(qkv_layout="joint"), ["qkv_layout", "fused"]))
    case("FDAConfig(non_block='merged')", api(cfg(non_block="merged"), ["non_block", "init"]))
    case("FDAConfig(device='gpu0')", api(cfg(device="gpu0"), ["device", "gpu0"]))
    case("FDAConfig(family='gpt2')", api(cfg(family="gpt2"), ["family", "bert"]))
    case("FDAConfig(part='attention')", api(cfg(part="attention"), ["part", "mlp"]))
    case("FDAConfig(init_hparams=[('alpha', 1)]) (list)", api(cfg(init_hparams=[("alpha", 1)]), ["init_hparams"]))
    case("FDAConfig.for_family('bart')", api(fam("bart"), ["bart", "roberta"]))
    case("FDAConfig.for_family('bert', size='xl')", api(fam("bert", size="xl"), ["size", "large"]))
    case("FDAConfig.for_family('bert', adapt_lrr=1) (typo)", api(fam("bert", adapt_lrr=1.0), ["adapt_lrr", "adapt_lr"]))

    # -- calls on a tiny BERT
    def construct(block=1, anchor_init="gauss", experts=None, subset=None, **kw):
        def call(tmp):
            model, pre, exps = bert()
            return fda.construct_block(model, pre, exps if experts is None else experts(exps), block, anchor_init,
                                       small_cfg(**kw), experts_subset=subset)
        return call

    def adapt(anchors_fn, init="pretrained", **kw):
        def call(tmp):
            model, pre, exps = bert()
            return fda.adapt_block(model, pre, exps, 1, anchors_fn(tmp), init, None, small_cfg(init=init, **kw))
        return call

    def good_anchors(tmp):
        return [torch.randn(8, 3, D) * 0.1 for _ in range(2)]

    def merge(init="pretrained", anchor_init="gauss", experts=None, model=None, **kw):
        def call(tmp):
            m, pre, exps = bert()
            return fda.merge(model() if model else m, pre, exps if experts is None else experts(exps), init=init,
                             anchor_init=anchor_init, config=small_cfg(init=init if init in ("pretrained", "ta", "tsvm", "wudi") else "pretrained", **kw))
        return call

    Q = "encoder.layer.1.attention.self.query.weight"
    case("construct_lr=1e30 (construction diverges)", api(construct(construct_lr=1e30, construct_steps=10), ["construct_lr"]))
    case("construct_lr=1e30, weight anchors", api(construct(anchor_init="weight", construct_lr=1e30, construct_steps=10), ["construct_lr"]))
    case("sigma=1e30 (gauss anchors overflow)", api(construct(sigma=1e30), ["sigma"]))
    case("adapt_lr=1e30 from pretrained", api(adapt(good_anchors, adapt_lr=1e30, adapt_epochs=10), ["adapt_lr"]))
    case("adapt_lr=1e30 from the TA init", api(adapt(good_anchors, init="ta", adapt_lr=1e30, adapt_epochs=10), ["adapt_lr"]))
    case("fda.merge with adapt_lr=1e30", api(merge(anchor_init="weight", adapt_lr=1e30, adapt_epochs=10), ["adapt_lr"]))
    case("fda.merge from TA with ta_lambda=1e300", api(merge(init="ta", ta_lambda=1e300), ["ta_lambda|alpha"]))
    case("construct: block index out of range (99)", api(construct(block=99), ["99|block"]))
    case("construct: experts_subset=[5] of 2 experts", api(construct(subset=[5]), ["experts_subset", "5"]))
    case("construct: anchor_init='uniform'", api(construct(anchor_init="uniform"), ["anchor_init", "gauss"]))
    case("construct: NaN in an expert's block", api(construct(experts=lambda e: [e[0], poisoned(e[1], Q)]), ["expert 1", Q]))
    case("construct: no experts", api(construct(experts=lambda e: []), ["expert"]))
    case("anchors file holding NaN (load_anchors)", api(lambda tmp: _nan_anchors(tmp), ["anchors.safetensors", "nan|non-finite"]))
    case("adapt: NaN anchors tensor", api(adapt(lambda tmp: [torch.full((8, 3, D), math.nan), torch.randn(8, 3, D)]), ["anchor", "nan|non-finite"]))
    case("adapt: anchors of the wrong width", api(adapt(lambda tmp: [torch.randn(8, 3, D + 1)] * 2), ["anchor", "shape|width"]))
    case("adapt: one anchor set for two experts", api(adapt(lambda tmp: [torch.randn(8, 3, D)]), ["anchor", "expert"]))
    case("adapt: float16 anchors give the float32 result", control(adapt(lambda tmp: [a.half() for a in _fixed_anchors()]),
         lambda out, tmp: _same_adapt(out, adapt(lambda tmp: [a.half().float() for a in _fixed_anchors()])(tmp))), True)
    case("merge: expert with a missing key", api(merge(experts=lambda e: [e[0], {k: v for k, v in e[1].items() if k != Q}]), ["expert 1", Q]))
    case("merge: expert with another shape", api(merge(experts=lambda e: [e[0], {**e[1], Q: e[1][Q].t().contiguous()[:, :16]}]), ["expert 1", Q]))
    case("merge: unknown init ('tsv')", api(merge(init="tsv"), ["tsv", "tsvm"]))
    case("merge: model of no known family (nn.Linear)", api(merge(model=lambda: torch.nn.Linear(4, 4)), ["Linear", "register_adapter"]))
    case("merge: experts of another architecture (tiny CLIP)", api(merge(experts=lambda e: [states(tiny_clip(), 1)[1][0]] * 2), ["expert 0", "no tensor|lacks|missing"]))
    # -- control
    case("fda.merge of valid inputs gives a finite state with θ0's keys", control(merge(), lambda out, tmp: _check_merged(out)), True)
    return C


def _fixed_anchors():
    import torch

    g = torch.Generator().manual_seed(5)
    return [torch.randn(8, 3, D, generator=g) * 0.1 for _ in range(2)]


def _same_adapt(a, b) -> str | None:
    import torch

    pa, pb = a.params, b.params
    if set(pa) != set(pb):
        return "other keys than the float32 run"
    diff = [k for k in pa if not torch.allclose(pa[k].float(), pb[k].float(), atol=1e-5)]
    return f"differs from the float32 run at {diff[:2]}" if diff else None


def _nan_anchors(tmp: Path):
    import torch

    import fda
    from fda.io.checkpoints import save_state_dict

    path = tmp / "anchors.safetensors"
    save_state_dict({"anchors": torch.full((4, 3, D), math.nan)}, path)
    return fda.load_anchors(path)


def _check_merged(out: dict) -> str | None:
    import torch

    _, pre, _ = bert()
    if set(out) != set(pre):
        return "keys differ from θ0's"
    bad = [k for k, v in out.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    return f"non-finite tensors {bad[:3]}" if bad else None


# ================================================================================================
# class: io


class _Evil:
    """A pickle that runs code on load: it creates the marker file named in ``path``."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _marker_made(tmp: Path) -> str | None:
    return f"the pickle ran code on load: {tmp / 'PWNED'} exists" if (tmp / "PWNED").exists() else None


def llama_dirs(tmp: Path, n_experts: int = 2) -> tuple[Path, list[Path]]:
    from fda.io.synthetic import llama_config, write_expert, write_synthetic_llama

    base = write_synthetic_llama(tmp / "base", llama_config(2, hidden=32, vocab=64), shard_size="20KB")
    return base, [write_expert(base, tmp / f"e{i}", seed=i + 1, scale=0.05, shard_size="20KB") for i in range(n_experts)]


def _poison_dir(d: Path, key: str, value: float = math.nan) -> None:
    from safetensors.torch import load_file, save_file

    from fda.io.checkpoints import SAFETENSORS_INDEX

    shard = d / json.loads((d / SAFETENSORS_INDEX).read_text())["weight_map"][key]
    state = load_file(str(shard))
    state[key] = state[key].clone()
    state[key].view(-1)[0] = value
    save_file(state, str(shard), metadata={"format": "pt"})


UP = "model.layers.1.mlp.up_proj.weight"


def io_cases() -> list[Case]:
    import torch
    from safetensors.torch import save_file

    from fda.io.checkpoints import (
        SAFETENSORS_INDEX,
        LazyCheckpoint,
        load_state_dict,
        save_state_dict,
    )

    C = []

    def case(name, run, control_=False, note=""):
        C.append(Case("io", name, "io", run, control_, note))

    def st_file(tmp: Path, name: str = "m.safetensors") -> Path:
        p = tmp / name
        save_file({"a": torch.randn(64, 64), "b": torch.randn(64)}, str(p))
        return p

    def truncated(tmp):
        p = st_file(tmp)
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
        return load_state_dict(p)

    def garbage(tmp):
        p = tmp / "m.safetensors"
        p.write_bytes(os.urandom(4096))
        return load_state_dict(p)

    def huge_header(tmp):  # header length field claims 2**60 bytes
        p = tmp / "m.safetensors"
        p.write_bytes((2**60).to_bytes(8, "little") + b"{}")
        return load_state_dict(p)

    def sharded(tmp, shards: dict[str, list[str]], weight_map: dict[str, str] | None = None) -> Path:
        true_map = {}
        for name, keys in shards.items():
            save_file({k: torch.full((2, 2), float(i)) for i, k in enumerate(keys)}, str(tmp / name))
            true_map.update({k: name for k in keys})
        (tmp / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": true_map if weight_map is None else weight_map}))
        return tmp

    S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"

    def lying_index(reader):
        def call(tmp):
            d = sharded(tmp, {S1: ["a", "b"], S2: ["c"]}, {"a": S1, "b": S1, "c": S2, "ghost.weight": S2})
            return reader(d)
        return call

    def missing_shard(tmp):
        d = sharded(tmp, {S1: ["a"], S2: ["b"]})
        (d / S2).unlink()
        return load_state_dict(d)

    def unlisted_shard(tmp):
        d = sharded(tmp, {S1: ["a"], S2: ["b"]}, {"a": S1, "b": S1})
        return load_state_dict(d)

    def index_bad_json(tmp):
        d = sharded(tmp, {S1: ["a"], S2: ["b"]})
        (d / SAFETENSORS_INDEX).write_text('{"weight_map": {"a": ')
        return load_state_dict(d)

    def evil_bin(name):
        def call(tmp):
            p = tmp / name
            with open(p, "wb") as f:
                pickle.dump({"w": _Evil(str(tmp / "PWNED"))}, f)
            return load_state_dict(p)
        return call

    def evil_torch_save(tmp):
        p = tmp / "pytorch_model.bin"
        torch.save({"w": torch.zeros(2), "x": _Evil(str(tmp / "PWNED"))}, p)
        return load_state_dict(p)

    def evil_collect_env(tmp):
        import torch.utils.collect_env as ce

        class Run:
            def __reduce__(self):
                return (ce.run, (f"touch {tmp / 'PWNED'}",))

        p = tmp / "pytorch_model.bin"
        torch.save({"w": Run()}, p)
        return load_state_dict(p)

    def evil_bin_dir_convert(tmp):
        from fda.io.streaming import convert_bin_to_safetensors

        d = tmp / "bin"
        d.mkdir()
        torch.save({"w": torch.zeros(2), "x": _Evil(str(tmp / "PWNED"))}, d / "pytorch_model.bin")
        return convert_bin_to_safetensors(d, tmp / "out")

    def pickled_module(tmp):
        p = tmp / "model.pt"
        torch.save(torch.nn.Linear(2, 2), p)
        return load_state_dict(p)

    def plain_bin(tmp):
        p = tmp / "pytorch_model.bin"
        torch.save({"w": torch.arange(6.0).reshape(2, 3)}, p)
        return load_state_dict(p)

    def stream(method="ta", poison_expert: int | None = 1, poison_base=False, **kw):
        def call(tmp):
            from fda.io.streaming import stream_merge

            base, exps = llama_dirs(tmp)
            if poison_expert is not None:
                _poison_dir(exps[poison_expert], UP)
            if poison_base:
                _poison_dir(base, UP)
            return stream_merge(method, base, exps, tmp / "out", shard_size="20KB", **kw)
        return call

    def stream_no_index_written(tmp):
        return "an index was written: the failed merge left a loadable checkpoint" if (tmp / "out" / SAFETENSORS_INDEX).exists() else None

    def stream_vocab(tmp):
        from fda.io.streaming import stream_merge
        from fda.io.synthetic import llama_config, write_synthetic_llama

        base, exps = llama_dirs(tmp, 1)
        big = write_synthetic_llama(tmp / "big", llama_config(2, hidden=32, vocab=65), shard_size="20KB")
        return stream_merge("ta", base, [exps[0], big], tmp / "out", shard_size="20KB")

    def stream_out_is_input(tmp):
        from fda.io.streaming import stream_merge

        base, exps = llama_dirs(tmp)
        return stream_merge("ta", base, exps, exps[0], shard_size="20KB")

    def stream_missing_shard(tmp):
        from fda.io.streaming import stream_merge

        base, exps = llama_dirs(tmp)
        wm = json.loads((exps[1] / SAFETENSORS_INDEX).read_text())["weight_map"]
        (exps[1] / wm[UP]).unlink()
        return stream_merge("ta", base, exps, tmp / "out", shard_size="20KB")

    def stream_bin_expert(tmp):
        from fda.io.streaming import stream_merge

        base, exps = llama_dirs(tmp, 1)
        d = tmp / "binexp"
        d.mkdir()
        torch.save(load_state_dict(exps[0]), d / "pytorch_model.bin")
        shutil.copy(base / "config.json", d / "config.json")
        return stream_merge("ta", base, [exps[0], d], tmp / "out", shard_size="20KB")

    case("missing file", api(lambda tmp: load_state_dict(tmp / "nope.safetensors"), ["nope.safetensors"]))
    case("empty directory", api(lambda tmp: (tmp / "emptydir").mkdir() or load_state_dict(tmp / "emptydir"), ["emptydir", "safetensors"]))
    case("truncated safetensors", api(truncated, ["m.safetensors", "truncated|corrupt"]))
    case("random bytes named .safetensors", api(garbage, ["m.safetensors"]))
    case("safetensors header length 2**60", api(huge_header, ["m.safetensors"]))
    case("unknown extension (.h5)", api(lambda tmp: (tmp / "m.h5").write_bytes(b"x") and load_state_dict(tmp / "m.h5"), ["m.h5", ".safetensors"]))
    case("a .ckpt file that is not a pickle", api(lambda tmp: (tmp / "m.ckpt").write_bytes(b"not a pickle") and load_state_dict(tmp / "m.ckpt"), ["m.ckpt"]))
    case("shard index naming keys the shards do not hold (load_state_dict)", api(lying_index(load_state_dict), [SAFETENSORS_INDEX, "ghost.weight"]))
    case("shard index naming keys the shards do not hold (LazyCheckpoint)", api(lying_index(LazyCheckpoint), [SAFETENSORS_INDEX, "ghost.weight"]))
    case("shard index listing a missing shard file", api(missing_shard, [S2, "missing"]))
    case("shard file the index does not list", api(unlisted_shard, [S2]))
    case("shard index that is not valid JSON", api(index_bad_json, [SAFETENSORS_INDEX]))
    case("LazyCheckpoint: a key it does not hold", api(lambda tmp: LazyCheckpoint(st_file(tmp)).tensor("zzz"), ["zzz", "m.safetensors"]))
    case("pickle .bin that runs os.system on load", api(evil_bin("pytorch_model.bin"), ["pytorch_model.bin", "weights_only"], escaped=_marker_made))
    case("torch.save file with a code-running object", api(evil_torch_save, ["pytorch_model.bin"], escaped=_marker_made))
    case("pickle calling torch.utils.collect_env.run", api(evil_collect_env, ["pytorch_model.bin"], escaped=_marker_made))
    case("convert_bin_to_safetensors of a code-running pickle", api(evil_bin_dir_convert, ["pytorch_model.bin"], escaped=_marker_made))
    case("a pickled nn.Module (.pt)", api(pickled_module, ["model.pt", "weights_only"]))
    case("plain tensor state dict as .bin", control(plain_bin, lambda out, tmp: None if torch.equal(out["w"], torch.arange(6.0).reshape(2, 3)) else "wrong tensor"), True)
    case("save_state_dict of a non-tensor value", api(lambda tmp: save_state_dict({"a": [1, 2]}, tmp / "x.safetensors"), ["'a'|a:", "tensor"]))
    case("stream_merge: NaN in an expert (ta)", api(stream("ta"), ["expert1", UP], escaped=None, check=None))
    case("stream_merge: NaN in an expert (ties)", api(stream("ties"), ["expert1", UP]))
    case("stream_merge: NaN in the base", api(stream("average", poison_expert=None, poison_base=True), ["base", UP]))
    case("stream_merge: NaN expert leaves no index behind", _then_check(api(stream("tsvm"), ["expert1", UP]), stream_no_index_written))
    case("stream_merge: alpha=1e300", api(stream("ta", poison_expert=None, hparams={"alpha": 1e300}), ["alpha"]))
    case("stream_merge: unknown hyperparameter", api(stream("ta", poison_expert=None, hparams={"lamda": 0.5}), ["lamda", "alpha"]))
    case("stream_merge: an expert with a larger vocabulary", api(stream_vocab, ["embed_tokens", "vocab_mismatch"]))
    case("stream_merge: out_dir is an expert's directory", api(stream_out_is_input, ["out_dir", "e0"]))
    case("stream_merge: an expert's shard file deleted", api(stream_missing_shard, ["e1", "missing"]))
    case("stream_merge: a .bin expert directory", api(stream_bin_expert, ["binexp", "convert"]))
    return C


def _then_check(run: Callable[[Path], Verdict], after: Callable[[Path], str | None]) -> Callable[[Path], Verdict]:
    """Run a case, then a check of what it left on disk: a wrong leftover makes it silent."""

    def wrapped(tmp: Path) -> Verdict:
        v = run(tmp)
        why = after(tmp)
        if why and v.outcome in ("clear", "unclear"):
            return Verdict("silent", f"{why} ({v.message})", v.detail)
        return v

    return wrapped


# ================================================================================================
# class: cli


def write_sd_files(tmp: Path, nan_expert: int | None = None) -> None:
    """base.safetensors, e0.safetensors, e1.safetensors (the small plain state dicts)."""
    from fda.io.checkpoints import save_state_dict

    pre, exps = base_and_experts()
    save_state_dict(pre, tmp / "base.safetensors")
    for i, e in enumerate(exps):
        save_state_dict(poisoned(e, "enc.0.weight") if i == nan_expert else e, tmp / f"e{i}.safetensors")


def write_tiny_clip(tmp: Path, nan: bool = False) -> None:
    """A 2-block HF CLIP vision base dir and one expert file (as tests/layer_bench/test_caches.py)."""
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from fda.io.checkpoints import save_state_dict

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=16, patch_size=8, projection_dim=8)
    base = CLIPVisionModelWithProjection(cfg)
    base.save_pretrained(tmp / "base")
    expert = {k: v + 0.05 * torch.randn_like(v) for k, v in base.state_dict().items()}
    if nan:
        k = next(k for k in expert if "layers.1.mlp.fc1.weight" in k)
        expert = poisoned(expert, k)
    save_state_dict(expert, tmp / "mnist.safetensors")


CLIP_HP = {"n_anchors": 2, "construct_steps": 2, "adapt_epochs": 1, "progress": False}


def construct_argv(hp: dict | str = CLIP_HP, *extra: str, n_blocks: str = "2", block: str = "1") -> list[str]:
    fda_json = hp if isinstance(hp, str) else json.dumps(hp)
    return ["fda-construct", "--suite", "vitb32", "--family", "openclip", "--fda", fda_json, "--anchor-init", "gauss",
            "--n-blocks", n_blocks, "--base", "{tmp}/base", "--expert", "MNIST={tmp}/mnist.safetensors", "--block", block,
            "--out-dir", "{tmp}/anchors", *extra]


def _yaml_variant(edit: Callable[[dict], None], source: str = "config/config.yaml") -> Callable[[Path], None]:
    """Write {tmp}/bad.yaml: ``source`` with ``edit`` applied."""

    def before(tmp: Path) -> None:
        import yaml

        data = yaml.safe_load((REPO / source).read_text())
        edit(data)
        (tmp / "bad.yaml").write_text(yaml.safe_dump(data, sort_keys=False))

    return before


def _text_file(text: str, name: str = "bad.yaml") -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).write_text(text)


def _set(path: str, value: Any) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return edit


def _rename(path: str, new: str) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        node = data
        keys = path.split(".")
        for k in keys[:-1]:
            node = node[k]
        node[new] = node.pop(keys[-1])
    return edit


def _no_file(name: str) -> Callable[[subprocess.CompletedProcess, Path], str | None]:
    return lambda cp, tmp: f"exit 0 and wrote {name}" if (tmp / name).exists() else "exit 0"


def cli_cases() -> list[Case]:
    fb = _bin("fda-bench")
    C = []

    def case(name, argv, expect=(), before=None, control_=False, check=None, limit=120, note=""):
        run = process(fb + list(argv), expect, before=before, is_control=control_, check=check, limit=limit)
        C.append(Case("cli", name, "cli", run, control_, note))

    merge = ["merge", "--base", "{tmp}/base.safetensors", "--expert", "a={tmp}/e0.safetensors", "--expert", "b={tmp}/e1.safetensors",
             "--out", "{tmp}/out.safetensors"]
    # -- the command line itself
    case("no arguments", [], ["COMMAND|required"])
    case("unknown subcommand ('frobnicate')", ["frobnicate"], ["frobnicate", "merge"])
    case("misspelt subcommand ('validate-configs')", ["validate-configs", "config/config.yaml"], ["validate-configs", "validate-config"])
    case("unknown flag (merge --alpha 0.3)", merge[:1] + ["--method", "ta", "--alpha", "0.3"] + merge[1:], ["--alpha"], write_sd_files)
    case("--expert without TASK=", ["merge", "--method", "ta", "--base", "{tmp}/base.safetensors", "--expert", "{tmp}/e0.safetensors", "--out", "{tmp}/o.safetensors"], ["TASK=DIR"], write_sd_files)
    # -- merge
    case("merge --hparams with bad JSON", ["merge", "--method", "ta", "--hparams", "{alpha: 0.3}"] + merge[1:], ["--hparams", "JSON"], write_sd_files)
    case("merge --hparams a JSON list, not an object", ["merge", "--method", "ta", "--hparams", "[0.3]"] + merge[1:], ["hparams", "object|dict|mapping"], write_sd_files, check=_no_file("out.safetensors"))
    case("merge --hparams with an unknown name", ["merge", "--method", "ta", "--hparams", '{"lamda": 0.3}'] + merge[1:], ["lamda", "alpha"], write_sd_files, check=_no_file("out.safetensors"))
    case("merge --hparams alpha as a string", ["merge", "--method", "ta", "--hparams", '{"alpha": "0.3"}'] + merge[1:], ["alpha", "float"], write_sd_files, check=_no_file("out.safetensors"))
    case("merge --hparams alpha=1e300", ["merge", "--method", "ta", "--hparams", '{"alpha": 1e300}'] + merge[1:], ["alpha"], write_sd_files, check=_no_file("out.safetensors"))
    case("merge --method tsv (unknown)", ["merge", "--method", "tsv"] + merge[1:], ["tsv", "tsvm"], write_sd_files, check=_no_file("out.safetensors"))
    case("merge: base file missing", ["merge", "--method", "ta", "--base", "{tmp}/nobase.safetensors"] + merge[3:], ["nobase.safetensors"], write_sd_files)
    case("merge: expert path missing", ["merge", "--method", "ta", "--base", "{tmp}/base.safetensors", "--expert", "a={tmp}/e0.safetensors", "--expert", "b={tmp}/gone", "--out", "{tmp}/out.safetensors"], ["gone"], write_sd_files)
    case("merge: NaN in an expert", ["merge", "--method", "ta"] + merge[1:], ["enc.0.weight", "expert 1|e1.safetensors|'b'"], lambda tmp: write_sd_files(tmp, nan_expert=1), check=_no_file("out.safetensors"))
    case("merge: output into a directory that does not exist yet", ["merge", "--method", "ta"] + merge[1:-1] + ["{tmp}/no/such/dir/out.safetensors"], (), write_sd_files,
         control_=True, check=lambda cp, tmp: None if (tmp / "no/such/dir/out.safetensors").exists() else "no output file")
    # -- FDA jobs (a tiny CLIP, the vitb32 suite's model class)
    case("fda-construct --fda with bad JSON", construct_argv("{n_anchors: 2"), ["--fda", "JSON"], write_tiny_clip)
    case("fda-construct --fda with an unknown field", construct_argv({**CLIP_HP, "n_anchorz": 2}), ["n_anchorz", "n_anchors"], write_tiny_clip)
    case("fda-construct --fda n_anchors='2' (str)", construct_argv({**CLIP_HP, "n_anchors": "2"}), ["n_anchors", "int"], write_tiny_clip)
    case("fda-construct --fda construct_lr=1e30", construct_argv({**CLIP_HP, "construct_lr": 1e30, "construct_steps": 5}), ["construct_lr"], write_tiny_clip,
         check=lambda cp, tmp: "exit 0; anchors written" if list((tmp / "anchors").rglob("*.safetensors")) else "exit 0")
    case("fda-construct --n-blocks 3 for a 2-block model", construct_argv(n_blocks="3"), ["n_blocks", "2"], write_tiny_clip)
    case("fda-construct --block 7 of 2", construct_argv(block="7"), ["7", "0..1|range"], write_tiny_clip)
    case("fda-construct --anchor-init uniform", [a if a != "gauss" else "uniform" for a in construct_argv()], ["--anchor-init", "gauss"], write_tiny_clip)
    case("fda-construct: NaN in the expert", construct_argv(), ["mnist.safetensors|expert 0|MNIST", "fc1"], lambda tmp: write_tiny_clip(tmp, nan=True))
    case("fda-construct --family gpt2", [a if a != "openclip" else "gpt2" for a in construct_argv()], ["gpt2", "openclip"], write_tiny_clip)
    # -- evaluate
    ev = ["evaluate", "--suite", "minitext", "--tasks", "tech", "--base", "{tmp}/base", "--data", "{tmp}/data",
          "--expert", "tech={tmp}/tech", "--method", "ta", "--out", "{tmp}/eval.csv"]

    def nan_model(tmp: Path) -> None:
        import torch

        from fda.io.checkpoints import save_state_dict

        save_state_dict({"encoder.weight": torch.ones(4, 4), "encoder.bias": torch.tensor([0.0, math.nan, 1.0, 2.0])}, tmp / "merged.safetensors")

    case("evaluate a model with NaN weights", ev[:1] + ["--model", "{tmp}/merged.safetensors"] + ev[1:], ["merged.safetensors", "encoder.bias", "NaN"], nan_model, check=_no_file("eval.csv"))
    case("evaluate a missing model file", ev[:1] + ["--model", "{tmp}/nomodel.safetensors"] + ev[1:], ["nomodel.safetensors"])
    case("evaluate --suite bogus", ["evaluate", "--suite", "bogus", "--model", "{tmp}/merged.safetensors"] + ev[3:], ["bogus", "minitext"], nan_model)
    # -- streaming
    def llama(tmp: Path, nan: bool = False) -> None:
        _, exps = llama_dirs(tmp)
        if nan:
            _poison_dir(exps[1], UP)

    sm = ["stream-merge", "--method", "ta", "--base", "{tmp}/base", "--expert", "math={tmp}/e0", "--expert", "code={tmp}/e1",
          "--out", "{tmp}/merged", "--shard-size", "20KB"]
    case("stream-merge: NaN in an expert", sm, ["e1", UP], lambda tmp: llama(tmp, True), check=_no_file("merged/model.safetensors.index.json"))
    case("stream-merge --hparams alpha=1e300", sm + ["--hparams", '{"alpha": 1e300}'], ["alpha"], llama, check=_no_file("merged/model.safetensors.index.json"))
    case("stream-merge: the same task twice", ["stream-merge", "--method", "ta", "--base", "{tmp}/base", "--expert", "math={tmp}/e0", "--expert", "math={tmp}/e1", "--out", "{tmp}/merged"], ["math", "twice"], llama)

    def evil_bin_dir(tmp: Path) -> None:
        (tmp / "bin").mkdir()
        with open(tmp / "bin" / "pytorch_model.bin", "wb") as f:
            pickle.dump({"w": _Evil(str(tmp / "PWNED"))}, f)

    def evil_check(cp, tmp):
        return "exit 0" + ("; the pickle ran code: PWNED exists" if (tmp / "PWNED").exists() else "")

    C.append(Case("cli", "convert-bin of a code-running pickle", "cli",
                  _escape_if(process(fb + ["convert-bin", "{tmp}/bin", "{tmp}/out"], ["pytorch_model.bin"], before=evil_bin_dir, check=evil_check), _marker_made)))
    # -- validate-config
    vc = ["validate-config", "{tmp}/bad.yaml"]
    case("validate-config: typo in a key (methdos)", vc, ["methdos"], _yaml_variant(_rename("suites.minitext.methods", "methdos")))
    case("validate-config: wrong type (seeds: '0')", vc, ["seeds"], _yaml_variant(_set("suites.minitext.seeds", "0")))
    case("validate-config: out of range (fda.n_blocks: 0)", vc, ["n_blocks"], _yaml_variant(_set("suites.minitext.fda.n_blocks", 0)))
    case("validate-config: out of range (data_seed: -1)", vc, ["data_seed"], _yaml_variant(_set("suites.minitext.data_seed", -1)))
    case("validate-config: out of range (ta alpha: .nan)", vc, ["alpha"], _yaml_variant(_set("suites.minitext.methods.ta", {"alpha": math.nan})))
    case("validate-config: unknown task", vc, ["bogus", "tech"], _yaml_variant(_set("suites.minitext.tasks", ["tech", "bogus"])))
    case("validate-config: wrong family (minitext as clip-vision)", vc, ["family", "bert"], _yaml_variant(_set("suites.minitext.family", "clip-vision")))
    case("validate-config: unknown family (gpt2)", vc, ["gpt2", "bert"], _yaml_variant(_set("suites.minitext.family", "gpt2")))
    case("validate-config: unknown suite (minitxt)", vc, ["minitxt", "minitext"], _yaml_variant(_rename("suites.minitext", "minitxt")))
    case("validate-config: unknown method (tsv)", vc, ["tsv", "tsvm"], _yaml_variant(_set("suites.minitext.methods.tsv", {})))
    case("validate-config: unknown init (tsv)", vc, ["tsv", "inits"], _yaml_variant(_set("suites.minitext.fda.inits", ["pretrained", "tsv"])))
    case("validate-config: init whose baseline is not configured", vc, ["wudi"], _yaml_variant(lambda d: d["suites"]["minitext"]["methods"].pop("wudi")))
    case("validate-config: hyperparameter typo (ta: alpah)", vc, ["alpah", "alpha"], _yaml_variant(_set("suites.minitext.methods.ta", {"alpah": 0.3})))
    case("validate-config: FDA field typo (n_anchor)", vc, ["n_anchor", "n_anchors"], _yaml_variant(_set("suites.minitext.fda.hparams.n_anchor", 8)))
    case("validate-config: FDA value out of range (adapt_lr: -1)", vc, ["adapt_lr"], _yaml_variant(_set("suites.minitext.fda.hparams.adapt_lr", -1.0)))
    case("validate-config: alpha as a string ('0.3')", vc, ["alpha"], _yaml_variant(_set("suites.minitext.methods.ta", {"alpha": "0.3"})))
    case("validate-config: a task name with an underscore", vc, ["tech_2"], _yaml_variant(_set("suites.minitext.tasks", ["tech", "tech_2"])))
    case("validate-config: the same task twice", vc, ["tech"], _yaml_variant(_set("suites.minitext.tasks", ["tech", "tech", "society"])))
    case("validate-config: smoke_overrides task not in tasks", vc, ["bogus"], _yaml_variant(_set("suites.minitext.smoke_overrides.tasks", ["tech", "bogus"])))
    case("validate-config: an empty file", vc, ["bad.yaml|empty|suites"], _text_file(""))
    case("validate-config: YAML syntax error", vc, ["bad.yaml", "line"], _text_file("suites:\n  minitext: {family: bert\n"))
    case("validate-config: a YAML list at the top", vc, ["bad.yaml", "mapping"], _text_file("- suites\n"))
    case("validate-config: a missing file", ["validate-config", "{tmp}/absent.yaml"], ["absent.yaml"])
    case("validate-config --config smoke=maybe", ["validate-config", str(REPO / "config/config.yaml"), "--config", "smoke=maybe"], ["smoke"])
    case("validate-config --config without '='", ["validate-config", str(REPO / "config/config.yaml"), "--config", "smoke"], ["smoke", "KEY=VALUE"])
    case("cells on an empty file", ["cells", "{tmp}/bad.yaml"], ["bad.yaml|empty|suites"], _text_file(""))
    case("validate-config config/config.yaml", ["validate-config", str(REPO / "config/config.yaml")], control_=True)
    case("validate-config config/paper.yaml", ["validate-config", str(REPO / "config/paper.yaml")], control_=True)
    return C


def _escape_if(run: Callable[[Path], Verdict], side: Callable[[Path], str | None]) -> Callable[[Path], Verdict]:
    def wrapped(tmp: Path) -> Verdict:
        v = run(tmp)
        s = side(tmp)
        return Verdict("escaped", s, {**v.detail, "would_be": v.outcome}) if s else v

    return wrapped


# ================================================================================================
# class: snakemake


def snakemake_cases() -> list[Case]:
    smk = _bin("snakemake")
    C = []

    def case(name, argv, expect=(), before=None, control_=False, check=None, note=""):
        base = smk + ["-s", str(REPO / "Snakefile"), "--directory", "{tmp}", "-n", "--cores", "1"]
        C.append(Case("snakemake", name, "snakemake", process(base + list(argv), expect, before=before, is_control=control_,
                                                               check=check, limit=180), control_, note))

    def planned(cp, tmp):
        jobs = [ln for ln in cp.stdout.splitlines() if ln.strip() and not ln.startswith(("Building", "Job stats", "job ", "---", "total", "Reasons", "This was a dry-run"))]
        return "exit 0: the dry run planned jobs" + (f" ({', '.join(sorted({ln.split()[0] for ln in jobs})[:6])})" if jobs else "")

    cf = ["--configfile", "{tmp}/bad.yaml"]
    case("--configfile with a typo (methdos)", cf, ["methdos"], _yaml_variant(_rename("suites.minitext.methods", "methdos")), check=planned)
    case("--configfile with an unknown method (tsv)", cf, ["tsv"], _yaml_variant(_set("suites.minitext.methods.tsv", {})), check=planned)
    case("--configfile with an unknown init (tsv)", cf, ["tsv", "inits"], _yaml_variant(_set("suites.minitext.fda.inits", ["pretrained", "tsv"])), check=planned)
    case("--configfile with an FDA field typo (n_anchor)", cf, ["n_anchor", "n_anchors"], _yaml_variant(_set("suites.minitext.fda.hparams.n_anchor", 8)), check=planned)
    case("--configfile that is empty", cf, ["bad.yaml|empty|suites"], _text_file(""), check=planned, note="snakemake's own handling")
    case("--configfile that does not exist", ["--configfile", "{tmp}/absent.yaml"], ["absent.yaml"], check=planned, note="snakemake's own handling")
    case("--config smoke=maybe", ["--config", "smoke=maybe"], ["smoke"], check=planned)
    case("--config fda_jobs=medium", ["--config", "fda_jobs=medium"], ["fda_jobs", "coarse"], check=planned)
    case("target results/minitext_bogus.csv", ["results/minitext_bogus.csv"], ["minitext_bogus.csv", "configured|valid"], check=planned)
    case("target results/minivision_ta_fda.csv with smoke=true (ta not a smoke init)", ["results/minivision_ta_fda.csv", "--config", "smoke=true"],
         ["minivision_ta_fda.csv", "configured|valid"], check=planned)
    case("target results/minitext_ta.csv with config/paper.yaml (suite not configured)", ["results/minitext_ta.csv", "--configfile", str(REPO / "config/paper.yaml")],
         ["minitext_ta.csv", "configured|valid"], check=planned)
    case("target results/minitext_wudi_fda.csv after removing wudi from fda.inits", ["results/minitext_wudi_fda.csv"] + cf, ["minitext_wudi_fda.csv", "configured|valid"],
         _yaml_variant(_set("suites.minitext.fda.inits", ["pretrained", "ta"])), check=planned)
    case("target work/minitext/fda/seed7/... (seed not configured)", ["work/minitext/fda/seed7/ta-gauss/merged.safetensors"], ["seed7", "configured|seeds"], check=planned)
    case("results/minitext_ta.csv (a configured cell)", ["results/minitext_ta.csv"], control_=True,
         check=lambda cp, tmp: None if "cell" in cp.stdout else "no cell job in the plan")
    return C


# ================================================================================================
# class: caches


def _capture_cli(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``fda-bench`` in-process; (exit status, stderr)."""
    import io

    from fda.bench import cli

    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        try:
            rc = cli.main(list(argv))
        except SystemExit as err:
            rc = err.code if isinstance(err.code, int) else 1
            buf.write(str(err.code))
    return rc, buf.getvalue()


def _clip_job(tmp: Path, kind: str, hp: dict = CLIP_HP, *extra: str) -> list[str]:
    return [kind, "--suite", "vitb32", "--family", "openclip", "--fda", json.dumps(hp), "--anchor-init", "gauss",
            "--n-blocks", "2", "--base", str(tmp / "base"), "--expert", f"MNIST={tmp / 'mnist.safetensors'}", "--block", "1", *extra]


def _construct_job(tmp: Path, hp: dict = CLIP_HP) -> list[str]:
    return _clip_job(tmp, "fda-construct", hp, "--out-dir", str(tmp / "anchors"), "--cache-dir", str(tmp / "cache"))


def _adapt_job(tmp: Path, hp: dict = CLIP_HP) -> list[str]:
    return _clip_job(tmp, "fda-adapt", hp, "--init", "pretrained", "--anchors-dir", str(tmp / "anchors"), "--blocks-dir", str(tmp / "blocks"))


@contextlib.contextmanager
def _code_version(value: str):
    from fda.bench import provenance

    old = provenance.method_code_version
    provenance.method_code_version = lambda: value
    try:
        yield
    finally:
        provenance.method_code_version = old


def cache_verdict(stage_err: str, hit_marker: str, want_hit: bool, what: str) -> Verdict:
    hit = hit_marker in stage_err
    if want_hit:
        return Verdict("clear", f"{what}: cache reused (right)") if hit else Verdict("unclear", f"{what}: recomputed, the cache was not reused")
    return Verdict("silent", f"{what}: the cache answered ('{hit_marker}')") if hit else Verdict("clear", f"{what}: recomputed (the cache was not reused)")


def cache_cases() -> list[Case]:
    C = []

    def case(name, run, control_=False, note="", entry="api"):
        C.append(Case("caches", name, entry, run, control_, note))

    def anchors_after(change: Callable[[Path], Any], want_hit: bool, what: str, hp2: dict | None = None):
        def run(tmp: Path) -> Verdict:
            write_tiny_clip(tmp)
            rc, err = _capture_cli(_construct_job(tmp))
            if rc or "construct block 1" not in err:
                return Verdict("unclear", f"the first construction failed: {first_line(err)}")
            shutil.rmtree(tmp / "anchors")  # snakemake deletes a rerun job's outputs
            with change(tmp) or contextlib.nullcontext():
                rc, err = _capture_cli(_construct_job(tmp, hp2 or CLIP_HP))
            if rc:
                return Verdict("unclear", f"the second construction failed: {first_line(err)}")
            return cache_verdict(err, "cached anchors", want_hit, what)
        return run

    def blocks_after(change: Callable[[Path], Any], want_hit: bool, what: str):
        def run(tmp: Path) -> Verdict:
            write_tiny_clip(tmp)
            for argv in (_construct_job(tmp), _adapt_job(tmp)):
                rc, err = _capture_cli(argv)
                if rc:
                    return Verdict("unclear", f"setup failed: {first_line(err)}")
            with change(tmp) or contextlib.nullcontext():
                rc, err = _capture_cli(_adapt_job(tmp))
            if rc:
                return Verdict("unclear", f"the second adaptation failed: {first_line(err)}")
            return cache_verdict(err, "cached (", want_hit, what)
        return run

    def same_size_same_mtime(tmp: Path):
        """Replace the expert by other weights of the same size, then restore its mtime (cp -p / rsync -a of a file with that mtime)."""
        import torch

        from fda.io.checkpoints import load_state_dict, save_state_dict

        f = tmp / "mnist.safetensors"
        st = f.stat()
        sd_ = load_state_dict(f)
        save_state_dict({k: v + 0.5 * torch.randn_like(v) for k, v in sd_.items()}, f)
        assert f.stat().st_size == st.st_size
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))

    def rewrite_expert(tmp: Path):
        import torch

        from fda.io.checkpoints import load_state_dict, save_state_dict

        f = tmp / "mnist.safetensors"
        time.sleep(0.01)
        save_state_dict({k: v + 0.5 * torch.randn_like(v) for k, v in load_state_dict(f).items()}, f)

    case("anchor cache after the method's code changed", anchors_after(lambda tmp: _code_version("0.1.0+edited"), False, "method_code_version changed"))
    case("adapted-block cache after the method's code changed", blocks_after(lambda tmp: _code_version("0.1.0+edited"), False, "method_code_version changed"))
    case("anchor cache after the FDA settings changed", anchors_after(lambda tmp: None, False, "construct_steps 2 -> 3", {**CLIP_HP, "construct_steps": 3}))
    case("anchor cache after the expert file was rewritten", anchors_after(rewrite_expert, False, "expert rewritten"))
    case("anchor cache after the expert was replaced keeping size and mtime", anchors_after(same_size_same_mtime, False, "same size, mtime restored"),
         note="needs an mtime-preserving copy of a file with exactly the old mtime")
    case("adapted-block cache after the expert changed (anchors kept)", blocks_after(rewrite_expert, False, "expert rewritten, anchors unchanged"),
         note="CLI only: the workflow rebuilds the anchors first, which changes the key")
    case("anchor cache reused when nothing changed", anchors_after(lambda tmp: None, True, "same inputs"), True)
    case("anchor cache after a harness-only edit (fda/bench)", anchors_after(lambda tmp: _code_version(_hash_after_edit("fda/bench/report/tables.py", tmp, version=True)), True, "harness file edited"), True)

    def hash_case(rel: str, want_change: bool):
        def run(tmp: Path) -> Verdict:
            before, after = _hash_of_copy(tmp, None), _hash_of_copy(tmp, rel)
            changed = before != after
            if want_change:
                return Verdict("clear", f"editing {rel} changes the code hash ({before} -> {after})") if changed else \
                    Verdict("silent", f"editing {rel} leaves the code hash {before}: caches keyed by it answer for changed code")
            return Verdict("clear", f"editing {rel} keeps the hash (right)") if not changed else Verdict("unclear", f"editing {rel} changes the hash (recomputes everything)")
        return run

    case("code hash after editing fda/anchors.py (a copy of the package)", hash_case("fda/anchors.py", True))
    case("code hash after editing fda/adapt.py", hash_case("fda/adapt.py", True))
    case("code hash after editing baselines/tsvm.py (an FDA init)", hash_case("baselines/tsvm.py", True))
    case("code hash after editing fda/io/checkpoints.py", hash_case("fda/io/checkpoints.py", True))
    case("code hash after editing fda/bench/report/tables.py (harness)", hash_case("fda/bench/report/tables.py", False), True)

    # -- stream_merge's resume
    def resume_case(killed: bool):
        def run(tmp: Path) -> Verdict:
            import torch

            from fda.io.checkpoints import load_state_dict
            from fda.io.streaming import stream_merge

            base, exps = llama_dirs(tmp)
            out = tmp / "out"
            if killed:  # a ta alpha=0.3 run killed at its third block (after two flushed blocks)
                from fda.io import streaming

                real, calls = streaming.read_block, {"n": 0}

                def read_then_die(*a, **kw):
                    calls["n"] += 1
                    if calls["n"] > 2:
                        raise KeyboardInterrupt("killed")
                    return real(*a, **kw)

                streaming.read_block = read_then_die
                try:
                    with contextlib.suppress(KeyboardInterrupt):
                        stream_merge("ta", base, exps, out, shard_size="1KB", hparams={"alpha": 0.3})
                finally:
                    streaming.read_block = real
            else:
                stream_merge("ta", base, exps, out, shard_size="20KB", hparams={"alpha": 0.3})
            stream_merge("ta", base, exps, out, shard_size="20KB" if not killed else "1KB", hparams={"alpha": 0.9}, resume=True)
            fresh = tmp / "fresh"
            stream_merge("ta", base, exps, fresh, shard_size="20KB", hparams={"alpha": 0.9})
            a, b = load_state_dict(out), load_state_dict(fresh)
            stale = [k for k in b if not torch.allclose(a[k], b[k])]
            what = "a killed alpha=0.3 run" if killed else "a finished alpha=0.3 run"
            if stale:
                return Verdict("silent", f"resume=True over {what} with alpha=0.9 returned {len(stale)} of {len(b)} tensors of the old "
                                         f"settings (e.g. {stale[0]})")
            return Verdict("clear", f"resume over {what} recomputed with the new settings")
        return run

    case("stream_merge(resume=True) over a finished run with other hparams", api_verdict(resume_case(False), ["resume", "alpha|hparams|settings"]))
    case("stream_merge(resume=True) over a killed run with other hparams", api_verdict(resume_case(True), ["resume", "alpha|hparams|settings"]))

    def cli_resume_case(killed: bool):
        def run(tmp: Path) -> Verdict:
            import torch

            from fda.io import streaming
            from fda.io.checkpoints import load_state_dict

            base, exps = llama_dirs(tmp)

            def argv(alpha: float, out: str) -> list[str]:
                return ["stream-merge", "--method", "ta", "--base", str(base), "--expert", f"math={exps[0]}", "--expert", f"code={exps[1]}",
                        "--out", str(tmp / out), "--shard-size", "1KB", "--hparams", json.dumps({"alpha": alpha}), "--resume"]

            if killed:
                real, calls = streaming.read_block, {"n": 0}

                def read_then_die(*a, **kw):
                    calls["n"] += 1
                    if calls["n"] > 2:
                        raise KeyboardInterrupt("killed")
                    return real(*a, **kw)

                streaming.read_block = read_then_die
                try:
                    with contextlib.suppress(KeyboardInterrupt):
                        _capture_cli(argv(0.3, "merged"))
                finally:
                    streaming.read_block = real
            else:
                _capture_cli(argv(0.3, "merged"))
            rc, err = _capture_cli(argv(0.9, "merged"))
            if rc:
                return Verdict("unclear", f"the resumed run failed: {first_line(err)}")
            _capture_cli(argv(0.9, "fresh"))
            a, b = load_state_dict(tmp / "merged"), load_state_dict(tmp / "fresh")
            stale = [k for k in b if not torch.allclose(a[k], b[k])]
            if stale:
                return Verdict("silent", f"--resume kept {len(stale)} tensors of the alpha=0.3 run")
            return Verdict("clear", "--resume with other hparams started afresh (the staging dir is keyed by inputs and settings)")
        return run

    case("fda-bench stream-merge --resume over a finished run with other hparams", cli_resume_case(False), True, entry="cli")
    case("fda-bench stream-merge --resume over a killed run with other hparams", cli_resume_case(True), True, entry="cli")
    return C


def api_verdict(run: Callable[[Path], Verdict], expect: Sequence[str]) -> Callable[[Path], Verdict]:
    """A case whose body returns its own verdict; an exception in it is judged as an api error."""

    def wrapped(tmp: Path) -> Verdict:
        try:
            return run(tmp)
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt):
                raise
            return judge_exception(err, expect)

    return wrapped


def _copy_packages(tmp: Path) -> Path:
    root = tmp / "pkgcopy"
    if not root.exists():
        for name in ("fda", "baselines"):
            shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _hash_of_copy(tmp: Path, edit: str | None) -> str:
    """method_code_hash() of a copy of the packages, after appending a comment to ``edit``."""
    root = _copy_packages(tmp)
    if edit:
        f = root / edit
        f.write_text(f.read_text() + "\n# an edit\n")
    code = "from fda.bench.provenance import method_code_hash; print(method_code_hash())"
    env = {**_env(), "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def _hash_after_edit(rel: str, tmp: Path, version: bool = False) -> str:
    from fda import __version__

    h = _hash_of_copy(tmp, rel)
    return f"{__version__}+{h}" if version else h


# ================================================================================================
# class: sandbox


@dataclass
class SandboxAPI:
    """The sandbox entry point found at run time (the module may change under us)."""

    name: str
    judge: Callable[..., Any]  # judge(solution, tests, setup="", entry_point=None, **limits) -> result with .passed
    isolated: bool  # a namespaced sandbox (PID namespace, own uid): attacks that could hurt the host run only then
    humaneval: Callable[[dict, str], Any] | None  # (example, completion) -> what judge_task takes
    judge_task: Callable[..., Any] | None


def sandbox_api() -> SandboxAPI:
    import importlib
    import inspect

    sb = importlib.import_module("fda.bench.eval.llm.sandbox")
    try:
        ct = importlib.import_module("fda.bench.eval.llm.code_tasks")
    except Exception:  # noqa: BLE001
        ct = None
    if hasattr(sb, "run_task") and hasattr(sb, "CodeTask"):
        fields = {f.name for f in dataclasses.fields(sb.CodeTask)}
        limit_names = {f.name for f in dataclasses.fields(sb.Limits)} if hasattr(sb, "Limits") else {"timeout", "memory_mb"}
        limit_names |= {"isolation"}

        def judge(solution: str, tests: str, setup: str = "", entry_point: str | None = None, **limits: Any) -> Any:
            kw = {k: v for k, v in {"setup": setup, "entry_point": entry_point}.items() if k in fields}
            return sb.run_task(sb.CodeTask(solution=solution, tests=tests, **kw), **{k: v for k, v in limits.items() if k in limit_names})

        def judge_task(task: Any, **limits: Any) -> Any:
            return sb.run_task(task, **{k: v for k, v in limits.items() if k in limit_names})

        isolated = "bwrap" in getattr(sb, "ISOLATIONS", ()) and hasattr(sb, "SandboxUnavailableError")
        he = getattr(ct, "humaneval_task", None) if ct else None
        return SandboxAPI("run_task(CodeTask(solution, tests, setup, entry_point))", judge, isolated, he, judge_task)
    if hasattr(sb, "run_program"):
        params = set(inspect.signature(sb.run_program).parameters)

        def judge_old(solution: str, tests: str, setup: str = "", entry_point: str | None = None, **limits: Any) -> Any:
            program = f"{setup}\n{solution}\n\n{tests}\n"
            return sb.run_program(program, **{k: v for k, v in limits.items() if k in params})

        he = getattr(ct, "humaneval_program", None) if ct else None

        def judge_prog(program: str, **limits: Any) -> Any:
            return sb.run_program(program, **{k: v for k, v in limits.items() if k in params})

        return SandboxAPI("run_program(setup + solution + tests)", judge_old, False, he, judge_prog)
    raise RuntimeError(f"no known sandbox API in {sb.__file__} (expected run_task/CodeTask or run_program)")


class World:
    """What the attacks aim at, on the host: secret and victim files, listeners, a sentinel process,
    the harness's own pid (SIGUSR1 is counted), and markers to find leftover processes."""

    def __init__(self) -> None:
        import hashlib
        import secrets

        self.token = secrets.token_hex(12)
        base = "/var/tmp" if os.access("/var/tmp", os.W_OK) else None
        self.host = Path(tempfile.mkdtemp(prefix="hostile-sbx-", dir=base))  # outside /tmp: not shadowed by a sandbox's /tmp
        self.host.chmod(0o777)
        self.secret = self.host / "secret.txt"
        self.secret.write_text(self.token)
        self.secret.chmod(0o644)
        self.victim = self.host / "victim.txt"
        self.visible_dir = Path(os.path.realpath(sys.base_prefix))  # bound read-only inside the sandbox
        self.visible_victim = self.visible_dir / f"hostile-victim-{self.token[:8]}.txt"
        self.site = Path(os.path.realpath(sys.base_prefix)) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        self.pth = self.site / f"hostile_{self.token[:8]}.pth"
        self.shm = Path("/dev/shm") / f"hostile-{self.token[:8]}"
        self.marker = f"hostile-marker-{self.token}"
        self.comm = f"h{self.token[:10]}"  # /proc/PID/comm marker (15 bytes at most)
        self.reset_victims()
        self.hashes = {}
        for name, path in (("shadow", "/etc/shadow"), ("readme", str(REPO / "README.md")), ("venv", str(REPO / ".venv" / "pyvenv.cfg")),
                           ("cmdline", f"/proc/{os.getpid()}/cmdline")):
            try:
                self.hashes[name] = hashlib.sha256(Path(path).read_bytes().decode("utf-8", "replace").encode()).hexdigest()
            except OSError:
                self.hashes[name] = "unreadable-on-the-host"
        self.received: list[bytes] = []
        self._stop = threading.Event()
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp_port = self.udp.getsockname()[1]
        self.abstract = f"hostile-{self.token[:8]}"
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.unix.bind("\0" + self.abstract)
        self.unix.listen(16)
        self.threads = [threading.Thread(target=self._serve, args=(s,), daemon=True) for s in (self.tcp, self.unix)]
        self.threads.append(threading.Thread(target=self._serve_udp, daemon=True))
        for t in self.threads:
            t.start()
        self.signals = 0
        self._old_usr1 = signal.signal(signal.SIGUSR1, self._on_usr1)
        self.sentinel = self._new_sentinel()

    # -- host side
    def _on_usr1(self, signum, frame) -> None:
        self.signals += 1

    def _serve(self, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(0.5)
                data = b""
                with contextlib.suppress(OSError):
                    data = conn.recv(4096)
                self.received.append(b"connect:" + data)

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.2)
        while not self._stop.is_set():
            try:
                data, _ = self.udp.recvfrom(4096)
            except (TimeoutError, OSError):
                continue
            self.received.append(b"udp:" + data)

    def _new_sentinel(self) -> subprocess.Popen:
        return subprocess.Popen(["sleep", "3600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def reset_victims(self) -> None:
        self.victim.write_text("original")
        self.victim.chmod(0o666)
        try:
            self.visible_victim.write_text("original")
            self.visible_victim.chmod(0o666)
        except OSError:
            self.visible_victim = None  # type: ignore[assignment]

    def leftovers(self) -> list[int]:
        """Host pids whose command line holds the marker or whose comm is the comm marker."""
        found = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if self.marker.encode() in (d / "cmdline").read_bytes() or (d / "comm").read_text().strip() == self.comm:
                    found.append(int(d.name))
            except OSError:
                continue
        return found

    def kill_leftovers(self) -> None:
        for pid in self.leftovers():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    def subst(self, code: str) -> str:
        values = {"TOKEN": self.token, "HOST": str(self.host), "SECRET": str(self.secret), "VICTIM": str(self.victim),
                  "VISVICTIM": str(self.visible_victim), "VISDIR": str(self.visible_dir), "PTH": str(self.pth), "SHM": str(self.shm),
                  "PORT": str(self.port), "UDPPORT": str(self.udp_port), "ABSTRACT": self.abstract, "HPID": str(os.getpid()),
                  "SPID": str(self.sentinel.pid), "MARKER": self.marker, "COMM": self.comm, "README": str(REPO / "README.md"),
                  "VENVCFG": str(REPO / ".venv" / "pyvenv.cfg"), **{f"HASH_{k.upper()}": v for k, v in self.hashes.items()}}
        for k, v in values.items():
            code = code.replace(f"@{k}@", v)
        return code

    def side_effects(self) -> list[str]:
        """Everything an attack may have done on the host (and clean it up for the next case)."""
        out = []
        known = {"secret.txt", "victim.txt"}
        extra = sorted(p.name for p in self.host.iterdir() if p.name not in known)
        if extra:
            out.append(f"created {extra} in the host directory {self.host}")
        try:
            if self.victim.read_text() != "original":
                out.append("modified a host file outside the sandbox")
        except OSError:
            out.append("removed or renamed a host file outside the sandbox")
        if self.visible_victim is not None:
            with contextlib.suppress(OSError):
                Path(f"{self.visible_victim}.x").unlink()
            try:
                if self.visible_victim.read_text() != "original":
                    out.append(f"modified a world-writable file under the read-only bind {self.visible_dir}")
            except OSError:
                out.append(f"removed or renamed a file under the read-only bind {self.visible_dir}")
        for p, what in ((self.pth, "a .pth file in the interpreter's site-packages"), (self.shm, "a file in /dev/shm")):
            if p.exists():
                out.append(f"created {what} ({p})")
                with contextlib.suppress(OSError):
                    p.unlink()
        if self.received:
            out.append(f"reached a listener of the harness: {self.received[:3]}")
        if self.signals:
            out.append(f"signalled the harness process ({self.signals} SIGUSR1)")
        if self.sentinel.poll() is not None:
            out.append(f"killed a sentinel process of the host (exit {self.sentinel.returncode})")
            self.sentinel = self._new_sentinel()
        left = self.leftovers()
        if left:
            out.append(f"{len(left)} process(es) of the task still alive after the call returned")
            self.kill_leftovers()
        # clean up for the next case
        for p in self.host.iterdir():
            if p.name not in known:
                with contextlib.suppress(OSError):
                    shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        self.received.clear()
        self.signals = 0
        self.reset_victims()
        return out

    def close(self) -> None:
        self._stop.set()
        for s in (self.tcp, self.udp, self.unix):
            with contextlib.suppress(OSError):
                s.close()
        self.sentinel.kill()
        self.sentinel.wait()
        self.kill_leftovers()
        signal.signal(signal.SIGUSR1, self._old_usr1)
        shutil.rmtree(self.host, ignore_errors=True)
        for p in (self.visible_victim, self.pth, self.shm):
            if p is not None:
                for q in (p, Path(f"{p}.x")):
                    with contextlib.suppress(OSError):
                        q.unlink()


_WORLD: World | None = None
_API: SandboxAPI | None = None
_ISOLATION: str | None = None  # --self-check: "none", to show the detectors fire when nothing isolates the code
WRONG = "\ndef f(x):\n    return x\n"  # the wrong answer every attack ships: f(1) is 1, the tests want 2
WANT = "assert f(1) == 2\nassert f(5) == 10\n"


def _iso() -> dict[str, str]:
    return {"isolation": _ISOLATION} if _ISOLATION else {}


def sbx(solution: str, tests: str = WANT, *, is_control: bool = False, setup: str = "", entry_point: str | None = None,
        timeout: float = 3.0, memory_mb: int = 512, wait_after: float = 0.0, wall: float | None = None,
        task: Callable[[World, SandboxAPI], Any] | None = None) -> Callable[[Path], Verdict]:
    """A sandbox case: judge ``solution`` (placeholders ``@NAME@`` filled from the World) against ``tests``."""

    def run(tmp: Path) -> Verdict:
        world, api_ = _WORLD, _API
        assert world is not None and api_ is not None
        t0 = time.perf_counter()
        try:
            with time_limit(timeout + 60):
                if task is not None:
                    res = api_.judge_task(task(world, api_), timeout=timeout, memory_mb=memory_mb, **_iso())
                else:
                    res = api_.judge(world.subst(solution), world.subst(tests), setup=world.subst(setup), entry_point=entry_point,
                                     timeout=timeout, memory_mb=memory_mb, **_iso())
        except BaseException as err:
            if isinstance(err, KeyboardInterrupt):
                raise
            side = world.side_effects()
            if side:
                return Verdict("escaped", "; ".join(side), {"harness_error": f"{type(err).__name__}: {err}"})
            return Verdict("unclear", f"the harness raised {type(err).__name__}: {first_line(str(err))}", {"exception": type(err).__name__})
        dt = time.perf_counter() - t0
        if wait_after:
            early = world.leftovers()
            time.sleep(wait_after)
        side = world.side_effects()
        if wait_after and early:
            side.insert(0, f"{len(early)} process(es) alive right after the call returned")
        status = getattr(res, "status", "passed" if res.passed else "failed")
        reason = getattr(res, "reason", "") or first_line(getattr(res, "stderr", "") or "")
        detail = {"status": status, "wall_s": round(dt, 3)}
        leaked = world.token in (getattr(res, "stdout", "") + getattr(res, "stderr", ""))
        if leaked:
            side.append("the secret host file's content appears in the program's captured output")
        if side:
            return Verdict("escaped", "; ".join(side), detail)
        if is_control:
            return Verdict("clear", f"passed ({dt:.2f} s)", detail) if res.passed else \
                Verdict("unclear", f"a legitimate program failed: {status}: {first_line(reason)}", detail)
        if res.passed:
            return Verdict("escaped", f"a wrong program was scored as passed ({dt:.2f} s)", detail)
        if wall is not None and dt > wall:
            return Verdict("unclear", f"stopped ({status}) but only after {dt:.1f} s (limit {timeout} s)", detail)
        return Verdict("clear", f"stopped: {status}" + (f": {first_line(reason, 160)}" if reason and status != "timeout" else "") + f" ({dt:.2f} s)", detail)

    return run


HE_PROMPT = '''def truncate_number(number: float) -> float:
    """ Given a positive floating point number, return its decimal part.
    >>> truncate_number(3.5)
    0.5
    """
'''
HE_TEST = '''

METADATA = {}


def check(candidate):
    assert candidate(3.5) == 0.5
    assert abs(candidate(1.33) - 0.33) < 1e-6
    assert abs(candidate(123.456) - 0.456) < 1e-6
'''
HE_EXAMPLE = {"task_id": "HumanEval/2", "prompt": HE_PROMPT, "test": HE_TEST, "entry_point": "truncate_number",
              "canonical_solution": "    return number % 1.0\n"}
HE_CYCLIC_PROMPT = '''def encode_cyclic(s: str):
    """returns encoded string by cycling groups of three characters."""
    groups = [s[(3 * i):min((3 * i + 3), len(s))] for i in range((len(s) + 2) // 3)]
    groups = [(group[1:] + group[0]) if len(group) == 3 else group for group in groups]
    return "".join(groups)


def decode_cyclic(s: str):
    """takes as input string encoded with encode_cyclic function. Returns decoded string."""
'''
HE_CYCLIC_TEST = '''

def check(candidate):
    for s in ["abcdefgh", "hello world", "xy", ""]:
        assert candidate(encode_cyclic(s)) == s
'''
HE_CYCLIC = {"task_id": "HumanEval/38", "prompt": HE_CYCLIC_PROMPT, "test": HE_CYCLIC_TEST, "entry_point": "decode_cyclic"}


def _he(example: dict, completion: str) -> Callable[[World, SandboxAPI], Any]:
    def build(world: World, api_: SandboxAPI) -> Any:
        if api_.humaneval is None:
            raise RuntimeError("no humaneval task builder in fda.bench.eval.llm.code_tasks")
        return api_.humaneval(example, world.subst(completion))
    return build


def sandbox_cases() -> list[Case]:
    C = []

    def case(name, run, control_=False, note="", dangerous=False):
        C.append(Case("sandbox", name, "sandbox", run, control_, note, dangerous))

    # -- resources
    case("infinite loop at import", sbx("while True:\n    pass\n" + WRONG, timeout=2.0, wall=8.0))
    case("infinite loop inside the function", sbx("def f(x):\n    while True:\n        pass\n", timeout=2.0, wall=8.0))
    case("memory bomb: one 16 GB allocation", sbx("x = bytearray(16 * 2**30)\n" + WRONG), dangerous=True)
    case("memory bomb: growing list", sbx("l = []\nwhile True:\n    l.append(' ' * 10**7)\n" + WRONG, timeout=3.0, wall=10.0), dangerous=True)
    case("memory bomb across 8 forked children", sbx(
        "import os\nfor _ in range(8):\n    if os.fork() == 0:\n        l = []\n        while True:\n            l.append(' ' * 10**7)\n" + WRONG,
        timeout=3.0, wall=10.0), dangerous=True)
    case("fork bomb (every process forks, comm-marked)", sbx(
        "import ctypes, os\nctypes.CDLL(None).prctl(15, b'@COMM@', 0, 0, 0)\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n" + WRONG,
        timeout=2.0, wall=10.0), dangerous=True)
    case("a neighbour right after the fork bomb", sbx("def f(x):\n    return 2 * x\n", is_control=True, timeout=10.0), True)
    case("fork bomb of exec'd, marked sleepers", sbx(
        "import os, sys\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n    if pid == 0:\n"
        "        os.execv(sys.executable, [sys.executable, '-S', '-c', 'import time\\ntime.sleep(60)', '@MARKER@'])\n"
        "while True:\n    pass\n" + WRONG, timeout=2.0, wall=10.0), dangerous=True)
    case("thread bomb (10 000 threads)", sbx(
        "import threading, time\nfor _ in range(10000):\n    try:\n        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n    except Exception:\n        break\n" + WRONG,
        timeout=3.0, wall=10.0), dangerous=True)
    case("filling the disk (1 GB into the scratch dir)", sbx(
        "try:\n    with open('big.bin', 'wb') as fh:\n        for _ in range(1024):\n            fh.write(b'x' * 2**20)\nexcept Exception:\n    pass\n" + WRONG, timeout=4.0, wall=12.0))
    case("a setsid grandchild acting after the timeout", sbx(
        "import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        code = \"import time, socket\\ntime.sleep(2.0)\\ntry:\\n    open('@HOST@/late.txt', 'w').write('late')\\nexcept Exception:\\n    pass\\n"
        "try:\\n    socket.create_connection(('127.0.0.1', @PORT@), timeout=1).sendall(b'late')\\nexcept Exception:\\n    pass\\n\"\n"
        "        os.execv(sys.executable, [sys.executable, '-S', '-c', code, '@MARKER@'])\n    os._exit(0)\nwhile True:\n    pass\n" + WRONG,
        timeout=1.5, wait_after=2.5, wall=10.0), dangerous=True)
    # -- reading outside the scratch dir
    read = "def f(path):\n    try:\n        return open(path).read()\n    except Exception as e:\n        return repr(e)\n"
    case("read a host file outside the scratch dir (by path)", sbx(
        "try:\n    print(open('@SECRET@').read())\nexcept Exception:\n    pass\n" + read, "assert f('@SECRET@') == '@TOKEN@'\n"))
    case("read /etc/shadow", sbx(read, "import hashlib\nassert hashlib.sha256(f('/etc/shadow').encode()).hexdigest() == '@HASH_SHADOW@'\n"))
    case("read the repository (README.md)", sbx(read, "import hashlib\nassert hashlib.sha256(f('@README@').encode()).hexdigest() == '@HASH_README@'\n"))
    case("read the project's venv (pyvenv.cfg)", sbx(read, "import hashlib\nassert hashlib.sha256(f('@VENVCFG@').encode()).hexdigest() == '@HASH_VENV@'\n"))
    case("read the harness's /proc/PID/cmdline", sbx(read.replace("open(path).read()", "open(path, 'rb').read().decode('utf-8', 'replace')"),
                                                     "import hashlib\nassert hashlib.sha256(f('/proc/@HPID@/cmdline').encode()).hexdigest() == '@HASH_CMDLINE@'\n"))
    case("read a host file through a symlink in the scratch dir", sbx(
        "import os\ntry:\n    os.symlink('@SECRET@', 'link')\nexcept Exception:\n    pass\n" + read, "assert f('link') == '@TOKEN@'\n"))
    case("read a host file through /proc/1/root", sbx(read, "assert f('/proc/1/root@SECRET@') == '@TOKEN@'\n"))
    # -- writing outside
    def attempt(body: str) -> str:
        return "try:\n" + textwrap.indent(body, "    ") + "\nexcept Exception:\n    pass\n" + WRONG

    case("write a host file (open)", sbx(attempt("open('@HOST@/pwned.txt', 'w').write('x')")))
    case("write a host file (sqlite3.connect)", sbx(attempt("import sqlite3\nsqlite3.connect('@HOST@/pwned.db').execute('create table t(x)')")))
    case("make a FIFO on the host (os.mkfifo)", sbx(attempt("import os\nos.mkfifo('@HOST@/pwned.fifo')")))
    case("make a symlink on the host (os.symlink)", sbx(attempt("import os\nos.symlink('/tmp', '@HOST@/pwned.link')")))
    case("hard-link a host file and write through it", sbx(attempt("import os\nos.link('@VICTIM@', 'l')\nopen('l', 'a').write('X')")))
    case("append to a world-writable file under the read-only interpreter bind", sbx(attempt("open('@VISVICTIM@', 'a').write('X')")))
    case("hard-link that file into scratch and write through it", sbx(attempt("import os\nos.link('@VISVICTIM@', 'l')\nopen('l', 'a').write('X')")))
    case("remove / rename a file of the interpreter bind", sbx(attempt("import os\ntry:\n    os.rename('@VISVICTIM@', '@VISVICTIM@.x')\nexcept Exception:\n    pass\nos.remove('@VISVICTIM@')")))
    case("drop a .pth into the interpreter's site-packages", sbx(attempt("open('@PTH@', 'w').write('import os\\n')")))
    case("write to /dev/shm", sbx(attempt("open('@SHM@', 'w').write('x')")))
    # -- network and IPC
    case("loopback TCP to a listener of the harness", sbx(attempt("import socket\nsocket.create_connection(('127.0.0.1', @PORT@), timeout=1).sendall(b'exfil')")))
    case("loopback UDP to a socket of the harness", sbx(attempt("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\ns.sendto(b'exfil', ('127.0.0.1', @UDPPORT@))")))
    case("abstract unix socket of the harness", sbx(attempt("import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\ns.connect('\\0@ABSTRACT@')\ns.sendall(b'exfil')")))
    # -- signals
    case("SIGUSR1 to the harness pid", sbx(attempt("import os, signal\nos.kill(@HPID@, signal.SIGUSR1)")))
    case("kill a sentinel process of the host", sbx(attempt("import os, signal\nos.kill(@SPID@, signal.SIGKILL)")))
    case("pidfd_open + pidfd_send_signal on the sentinel", sbx(attempt("import os, signal\nfd = os.pidfd_open(@SPID@)\nsignal.pidfd_send_signal(fd, signal.SIGKILL)")))
    case("SIGKILL to the parent and to pid 1", sbx(attempt("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)")), dangerous=True)
    # -- the guard's own state
    case("rewrite guard state (patch every hook/check/literal function, raise rlimits)", sbx(
        "import sys, resource\nfor mod in list(sys.modules.values()):\n    d = getattr(mod, '__dict__', None)\n    if not isinstance(d, dict):\n        continue\n"
        "    for k, v in list(d.items()):\n        if callable(v) and any(s in k.lower() for s in ('literal', 'hook', 'guard', 'audit', 'check', 'answer', 'verdict', 'limit')):\n"
        "            try:\n                d[k] = (lambda *a, **kw: True)\n            except Exception:\n                pass\n"
        "for r in ('RLIMIT_AS', 'RLIMIT_NPROC', 'RLIMIT_FSIZE', 'RLIMIT_CPU', 'RLIMIT_NOFILE'):\n    try:\n"
        "        resource.setrlimit(getattr(resource, r), (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n        print('RLIMIT_RAISED', r)\n    except Exception:\n        pass\n"
        "try:\n    open('@HOST@/pwned.txt', 'w').write('x')\nexcept Exception:\n    pass\n" + WRONG))
    case("replace the relay's encoder through frames and sys.modules['__main__']", sbx(
        "import sys, gc\nfor o in gc.get_objects():\n    if callable(o) and getattr(o, '__name__', '') in ('_literal', 'answer', 'ask', 'forward', '_hook'):\n"
        "        try:\n            o.__code__ = (lambda *a, **kw: \"('ok', 2)\").__code__\n        except Exception:\n            pass\n"
        "f0 = sys._getframe()\nwhile f0 is not None:\n    for k in list(f0.f_globals):\n        if k in ('_literal', 'answer'):\n            f0.f_globals[k] = lambda *a, **kw: \"('ok', 2)\"\n    f0 = f0.f_back\n" + WRONG))
    # -- forging a pass
    case("print PASS and exit 0 before the tests", sbx("import sys\nprint('PASS')\nprint('ok: all tests passed')\nsys.stdout.flush()\nsys.exit(0)\n" + WRONG))
    case("os._exit(0) before the tests", sbx("import os\nos._exit(0)\n" + WRONG))
    case("write PASS to every file descriptor", sbx("import os\nfor fd in range(1024):\n    try:\n        os.write(fd, b'PASS\\n')\n    except OSError:\n        pass\n" + WRONG))
    case("write PASS to guessed result files", sbx(attempt("import os\nfor p in ('/tmp/result', '/tmp/verdict', '/tmp/PASS', 'result.txt', '../result', '/tmp/.result'):\n    try:\n        open(p, 'w').write('PASS\\n')\n    except OSError:\n        pass")))
    case("a result whose __eq__ is always True", sbx("class Y:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n\ndef f(x):\n    return Y()\n"))
    case("an int subclass whose __eq__ is always True", sbx("class Z(int):\n    def __eq__(self, other):\n        return True\n    __hash__ = int.__hash__\n\ndef f(x):\n    return Z(0)\n"))
    case("raise SystemExit(0) from the function", sbx("def f(x):\n    raise SystemExit(0)\n"))
    case("raise StopIteration into a map()-based test", sbx("def f(x):\n    raise StopIteration\n", "assert all(map(lambda x: f(x) == x + 1, [1, 2, 3]))\n"))
    case("patch builtins (abs) in the solution's process", sbx("import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0.0\n", "assert abs(f(1.0) - 2.0) < 1e-9\n"))
    case("define a function named like a builtin the tests use (abs)", sbx("def abs(x):\n    return 0\n\ndef f(x):\n    return 0.0\n", "assert abs(f(1.0) - 2.0) < 1e-9\n"),
         note="the one-file reference harnesses let it through too")
    case("HumanEval/2: completion that also defines abs()", sbx("", task=_he(HE_EXAMPLE, "def truncate_number(number: float) -> float:\n    return 0.5\n\n\ndef abs(x):\n    return 0\n")),
         note="the one-file reference harnesses let it through too")
    case("MBPP style: define set() used by the asserts", sbx("def set(*args):\n    return 0\n\ndef f(xs):\n    return []\n", "assert set(f([1, 2])) == set([2, 1])\n"),
         note="the one-file reference harnesses let it through too")
    case("HumanEval: completion redefines check()", sbx("", task=_he(HE_EXAMPLE, "def truncate_number(number: float) -> float:\n    return 0.0\n\n\ndef check(candidate):\n    pass\n")))
    case("HumanEval/38: completion redefines the prompt's encode_cyclic", sbx("", task=_he(HE_CYCLIC,
         "def encode_cyclic(s):\n    return s\n\n\ndef decode_cyclic(s):\n    return s\n")))
    case("a thread writing PASS to every fd during the tests", sbx(
        "import os, threading, time\ndef spam():\n    while True:\n        for fd in range(64):\n            try:\n                os.write(fd, b'PASS\\n')\n            except OSError:\n                pass\n        time.sleep(0.001)\n"
        "threading.Thread(target=spam, daemon=True).start()\n" + WRONG))
    case("an atexit handler that prints PASS and exits 0", sbx("import atexit, os\natexit.register(lambda: (print('PASS'), os._exit(0)))\n" + WRONG))
    # -- floods
    case("flood stdout (200 MB)", sbx("import sys\nchunk = 'x' * 2**20\nfor _ in range(200):\n    sys.stdout.write(chunk)\n" + WRONG, timeout=5.0, wall=15.0))
    case("flood stderr (200 MB)", sbx("import sys\nchunk = 'x' * 2**20\nfor _ in range(200):\n    sys.stderr.write(chunk)\n" + WRONG, timeout=5.0, wall=15.0))
    case("flood the reply (a 200 MB string)", sbx("def f(x):\n    return 'x' * (200 * 2**20)\n", timeout=5.0, wall=15.0))
    # -- legitimate programs (controls)
    ok = lambda name, sol, tests, **kw: case(name, sbx(sol, tests, is_control=True, **{"timeout": 10.0, "memory_mb": 1024, **kw}), True)
    ok("trivial: add", "def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\nassert add(-1, 1) == 0\n")
    ok("threads (4 workers)", "import threading\n\ndef f(n):\n    out = [0] * 4\n    def work(i):\n        out[i] = sum(range(i * n, (i + 1) * n))\n"
       "    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return sum(out)\n",
       "assert f(1000) == sum(range(4000))\n")
    ok("deep recursion (5000 frames)", "import sys\nsys.setrecursionlimit(20000)\n\ndef depth(n):\n    return 0 if n == 0 else 1 + depth(n - 1)\n", "assert depth(5000) == 5000\n")
    ok("100 MB of memory", "def f(n):\n    b = bytearray(n * 2**20)\n    return len(b)\n", "assert f(100) == 100 * 2**20\n")
    ok("its own scratch files", "import os\n\ndef f(s):\n    with open('note.txt', 'w') as fh:\n        fh.write(s)\n    os.makedirs('d/e', exist_ok=True)\n    with open('note.txt') as fh:\n        return fh.read()\n",
       "assert f('hello') == 'hello'\n")
    ok("the standard library", "import collections, itertools, re, math, heapq, functools, fractions, decimal, json, hashlib, datetime, statistics\n\n"
       "def f(xs):\n    c = collections.Counter(xs)\n    h = heapq.nsmallest(2, xs)\n    return (c.most_common(1)[0][0], h, math.gcd(12, 18), str(fractions.Fraction(1, 3)), "
       "hashlib.md5(b'a').hexdigest()[:6], json.dumps({'a': 1}), len(list(itertools.permutations(range(3)))), bool(re.match('a+', 'aaa')), statistics.mean([1, 2, 3]))\n",
       "assert f([3, 1, 3, 2]) == (3, [1, 2], 6, '1/3', '0cc175', '{\"a\": 1}', 6, True, 2)\n")
    ok("plain data results (tuple, dict, set, inf, None, bytes, complex)", "def f():\n    return ((1, 2), {'a': [1]}, {3}, float('inf'), None, b'x', 1 + 2j)\n",
       "r = f()\nassert r == ((1, 2), {'a': [1]}, {3}, float('inf'), None, b'x', 1 + 2j)\nassert isinstance(r[0], tuple)\n")
    ok("an expected ValueError", "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return x\n",
       "try:\n    f(-1)\nexcept ValueError:\n    pass\nelse:\n    raise AssertionError('no ValueError')\nassert f(2) == 2\n")
    ok("prints 10 000 lines and is right", "def f(x):\n    for i in range(10000):\n        print('line', i)\n    return 2 * x\n", WANT)
    ok("one second of CPU", "def f(n):\n    s = 0\n    for i in range(n):\n        s += i % 7\n    return s\n", "assert f(3_000_000) == sum(i % 7 for i in range(3_000_000))\n")
    ok("MBPP style with test_setup_code", "def area(r):\n    return PI * r * r\nPI = 3.0\n", "assert area(2) == 12.0\n", setup="import math\n")
    case("HumanEval/2 canonical completion", sbx("", is_control=True, timeout=10.0, memory_mb=1024,
         task=_he(HE_EXAMPLE, "    return number % 1.0\n")), True)
    case("HumanEval/38 canonical completion (uses the prompt's helper)", sbx("", is_control=True, timeout=10.0, memory_mb=1024,
         task=_he(HE_CYCLIC, "    return encode_cyclic(encode_cyclic(s))\n")), True)
    return C


def run_sandbox_class(cases: Sequence[Case]) -> list[Result]:
    global _WORLD, _API
    try:
        _API = sandbox_api()
    except Exception as err:  # noqa: BLE001
        return [Result(c.cls, c.name, c.entry, c.control, "unclear", f"no sandbox API: {err}", 0.0, {}) for c in cases]
    print(f"  sandbox API: {_API.name} (isolated: {_API.isolated})", flush=True)
    runnable = [c for c in cases if (_API.isolated and _ISOLATION is None) or not c.dangerous]
    skipped = [c for c in cases if c not in runnable]
    _WORLD = World()
    try:
        results = run_cases(runnable)
    finally:
        _WORLD.close()
        _WORLD = None
    for c in skipped:
        results.append(Result(c.cls, c.name, c.entry, c.control, "unclear", "not run: the sandbox found is not namespaced, and this attack could hurt the host", 0.0, {}))
    return results


def sandbox_overhead(runs: int = 20) -> dict[str, Any] | None:
    """Median wall time of a trivial passing program over ``runs`` runs (after one warm-up run)."""
    api_ = _API or sandbox_api()
    sol, tests = "def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3\n"
    api_.judge(sol, tests, timeout=10.0)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        res = api_.judge(sol, tests, timeout=10.0)
        times.append(time.perf_counter() - t0)
        if not res.passed:
            return {"error": "the trivial program failed", "call": api_.name}
    return {"runs": runs, "median_ms": 1000 * statistics.median(times), "min_ms": 1000 * min(times), "max_ms": 1000 * max(times),
            "call": api_.name + ", default isolation, timeout 10 s"}


# ================================================================================================
# running and reporting

BUILDERS: dict[str, Callable[[], list[Case]]] = {}


def register_builders() -> None:
    BUILDERS.update({"baselines": baselines_cases, "fda": fda_cases, "io": io_cases, "cli": cli_cases,
                     "snakemake": snakemake_cases, "caches": cache_cases, "sandbox": sandbox_cases})


def run_cases(cases: Sequence[Case], verbose: bool = True) -> list[Result]:
    results = []
    for c in cases:
        tmp = Path(tempfile.mkdtemp(prefix=f"hostile-{c.cls}-"))
        t0 = time.perf_counter()
        try:
            v = c.run(tmp)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # noqa: BLE001 - a bug of the benchmark itself, reported as such
            v = Verdict("unclear", f"BENCHMARK ERROR {type(err).__name__}: {err}", {"benchmark_error": traceback.format_exc(limit=3)})
        dt = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)
        message = v.message.replace(str(tmp), "{tmp}")
        if _WORLD is not None:
            message = message.replace(str(_WORLD.host), "{host}").replace(_WORLD.token, "{token}")
        r = Result(c.cls, c.name, c.entry, c.control, v.outcome, message, round(dt, 3), v.detail, c.note)
        results.append(r)
        if verbose:
            print(f"  {r.outcome:8s} {dt:6.2f}s  [{c.cls}] {c.name}{' [control]' if c.control else ''}: {r.message[:150]}", flush=True)
    return results


def summary(results: Sequence[Result]) -> list[dict[str, Any]]:
    rows = []
    for cls in CLASSES:
        rs = [r for r in results if r.cls == cls]
        if rs:
            rows.append({"class": cls, "tried": len(rs), **{o: sum(r.outcome == o for r in rs) for o in OUTCOMES}})
    if rows:
        rows.append({"class": "all", "tried": sum(r["tried"] for r in rows), **{o: sum(r[o] for r in rows) for o in OUTCOMES}})
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| class of input | tried | clear | unclear | silent | escaped |\n|---|---:|---:|---:|---:|---:|\n"
    body = ""
    for r in rows:
        title = CLASS_TITLES.get(r["class"], "**all**")
        body += f"| {title} | {r['tried']} | {r['clear']} | {r['unclear']} | {r['silent']} | {r['escaped']} |\n"
    return head + body


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_reports(results: Sequence[Result], prefix: Path, meta: dict[str, Any]) -> None:
    rows = summary(results)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    md = ["# How fda-bench treats hostile or careless input", "",
          (f"`{meta['command']}` — {meta['date']}, {meta['machine']}, git {meta['git']}"
           + (" (uncommitted changes in the tree)" if meta["dirty"] else "") + f"; {meta['seconds']:.0f} s in all."), "",
          ("Outcomes (rules in the docstring of `benchmarks/hostile_inputs.py`): **clear** = an error of the project "
           "naming the expected key/file/hyperparameter (CLI/Snakemake: exit ≠ 0, no traceback, the names in the "
           "output); **unclear** = another error (a traceback, a generic error, or the names missing); **silent** = no "
           "error (a wrong result written or returned, jobs planned for a bad target); **escaped** = sandboxed or "
           "unpickled code acted outside its box, or a wrong program passed. `[control]` cases are legitimate inputs "
           "that must succeed (clear) — a refusal is counted as unclear."), "", table(rows)]
    if meta.get("sandbox_overhead"):
        o = meta["sandbox_overhead"]
        md += [(f"Sandbox cost: a trivial passing program takes **{o['median_ms']:.0f} ms** median wall time "
                f"({o['runs']} runs, min {o['min_ms']:.0f} ms, max {o['max_ms']:.0f} ms; `{o['call']}`)."), ""]
    bad = [r for r in results if r.outcome in ("silent", "escaped")]
    if bad:
        md += ["## Silent and escaped cases", ""]
        md += [f"- **{r.outcome}** [{r.cls}] {r.name}{f' ({r.note})' if r.note else ''}: {_md_cell(r.message)}" for r in bad] + [""]
    md += ["## Every case", "", "| class | case | entry | outcome | s | first line of the message |", "|---|---|---|---|---:|---|"]
    for r in results:
        name = r.name + (" [control]" if r.control else "") + (f" ({r.note})" if r.note else "")
        md.append(f"| {r.cls} | {_md_cell(name)} | {r.entry} | {r.outcome} | {r.seconds:.2f} | {_md_cell(r.message)} |")
    md.append("")
    prefix.with_suffix(".md").write_text("\n".join(md), encoding="utf-8")
    data = {"meta": meta, "summary": rows, "cases": [dataclasses.asdict(r) for r in results]}
    prefix.with_suffix(".json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], check=False, cwd=REPO, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", help=f"comma-separated classes: {', '.join(CLASSES)}")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "hostile_inputs"), help="report path prefix")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--self-check", action="store_true",
                    help="run the sandbox attacks that cannot hurt the host with isolation='none', to show that each "
                         "detector fires when nothing isolates the code (expect 'escaped'); writes PREFIX-selfcheck")
    args = ap.parse_args(argv)
    if args.self_check:
        global _ISOLATION
        _ISOLATION = "none"
        args.only = "sandbox"
    register_builders()
    only = [c.strip() for c in args.only.split(",")] if args.only else list(CLASSES)
    unknown = [c for c in only if c not in CLASSES]
    if unknown:
        ap.error(f"unknown class(es) {unknown}; classes: {', '.join(CLASSES)}")
    t0 = time.perf_counter()
    results: list[Result] = []
    meta: dict[str, Any] = {}
    for cls in only:
        cases = BUILDERS[cls]()
        if args.list:
            for c in cases:
                print(f"[{cls}] ({c.entry}) {c.name}{' [control]' if c.control else ''}")
            continue
        print(f"== {cls}: {len(cases)} cases", flush=True)
        results += run_sandbox_class(cases) if cls == "sandbox" else run_cases(cases)
        if cls == "sandbox" and not args.self_check:
            meta["sandbox_overhead"] = sandbox_overhead()
        print(table(summary([r for r in results if r.cls == cls])[:1]), flush=True)
    if args.list:
        return 0
    meta.update(command="benchmarks/hostile_inputs.py" + (" --self-check" if args.self_check else f" --only {','.join(only)}" if args.only else ""),
                date=time.strftime("%Y-%m-%d %H:%M"), machine=f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                git=_git("rev-parse", "--short", "HEAD"), dirty=bool(_git("status", "--porcelain", "--untracked-files=no")),
                seconds=time.perf_counter() - t0)
    print("\n== summary\n" + table(summary(results)))
    bad = [r for r in results if r.outcome in ("silent", "escaped")]
    for r in bad:
        print(f"  {r.outcome.upper()} [{r.cls}] {r.name}: {r.message}")
    if not args.no_write:
        prefix = Path(args.out)
        if args.self_check:
            prefix = prefix.with_name(prefix.name + "-selfcheck")
        elif args.only:
            prefix = prefix.with_name(prefix.name + "-" + "-".join(only))
        write_reports(results, prefix, meta)
        print(f"wrote {prefix.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
