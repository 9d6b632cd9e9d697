"""Every command the README and docs/ show is one that runs: each is parsed by the program's own
argument parser (snakemake, fda-bench, the benchmark scripts), `make` targets exist, the files and
profiles they name exist, and a snakemake target under results/ is a cell of the config it names.

Commands are taken from ```bash blocks and from inline `code` that starts with a program name.
Syntax summaries (with `...`, `[`, `<`, or an upper-case placeholder such as COMMAND) are skipped;
a bare `fda-bench SUBCOMMAND` (a mention in prose) must name a subcommand; the examples of a
command that fails on purpose must fail.
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("snakemake", "fda-bench", "make", "python", "pytest")
PLACEHOLDER = re.compile(r"\.\.\.|…|\[|<|(^|\s)[A-Z]{3,}(\s|$)")
#: shown in the docs as what is refused
MEANT_TO_FAIL = {"snakemake results/minitext_bogus.csv"}


def _commands(text: str) -> list[str]:
    """Command lines of one Markdown file (``&&``/``;`` split, env assignments and comments dropped)."""
    fenced = re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    lines = [ln for block in fenced for ln in block.splitlines()] + re.findall(r"`([^`\n]+)`", prose)
    out = []
    for line in lines:
        for part in re.split(r"&&|;|\|", line.split(" #")[0]):
            part = re.sub(r"^\s*(\w+=\S*\s+)+", "", part).strip()
            if part.split(" ")[0] in PROGRAMS and " " in part and not PLACEHOLDER.search(part):
                out.append(part)
    return out


COMMANDS = sorted({(doc.relative_to(ROOT).as_posix(), cmd) for doc in DOCS for cmd in _commands(doc.read_text())})


def test_the_docs_show_commands_of_every_kind():
    programs = {cmd.split()[0] for _, cmd in COMMANDS}
    assert programs >= {"snakemake", "fda-bench", "make", "python"}, programs


class _Parsed(Exception):
    """Raised instead of running a script once its arguments parsed."""


def _parse_only(parser: argparse.ArgumentParser, args=None, namespace=None):
    _ORIGINAL_PARSE(parser, args, namespace)
    raise _Parsed


_ORIGINAL_PARSE = argparse.ArgumentParser.parse_args


def _check_snakemake(argv: list[str]) -> None:
    from snakemake.cli import get_argument_parser

    from fda.bench.config.load import load_config
    from fda.bench.config.naming import cells

    args = get_argument_parser().parse_args(argv)
    for f in args.configfile or []:
        assert (ROOT / f).is_file(), f"--configfile {f} does not exist"
    for profile in (args.profile, args.workflow_profile):
        if profile and str(profile) != "none":
            assert (ROOT / str(profile)).is_dir(), f"profile {profile} does not exist"
    results = [t for t in args.targets if t.startswith("results/") and t.endswith(".csv")]
    if results:
        config = load_config([ROOT / f for f in args.configfile or ["config/config.yaml"]], args.config or [])
        missing = set(results) - set(cells(config))
        assert not missing, f"{missing} is not a result cell of that config"


def _check_python(argv: list[str], monkeypatch) -> None:
    if argv[0] == "-m":
        module, argv = argv[1], argv[1:]
        run = lambda: runpy.run_module(module, run_name="__main__")  # noqa: E731
    else:
        assert (ROOT / argv[0]).is_file(), f"{argv[0]} does not exist"
        run = lambda: runpy.run_path(str(ROOT / argv[0]), run_name="__main__")  # noqa: E731
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _parse_only), pytest.raises(_Parsed):
        run()


def _check(program: str, argv: list[str], monkeypatch) -> None:
    if program == "python" and argv[:2] == ["-m", "pytest"]:
        program, argv = "pytest", argv[2:]
    if program == "snakemake":
        _check_snakemake(argv)
    elif program == "fda-bench":
        from fda.bench.cli import build_parser

        parser = build_parser()
        if len(argv) == 1:  # a subcommand named in prose
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
            assert argv[0] in commands, f"no fda-bench subcommand {argv[0]!r}"
        else:
            parser.parse_args(argv)
    elif program == "make":
        proc = subprocess.run(["make", "-n", *argv], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    elif program == "python":
        if argv[0] == "-m" or argv[0].endswith(".py"):  # not the interpreter's own flags (`python -S`)
            _check_python(argv, monkeypatch)
    elif program == "pytest":
        markers = (ROOT / "pyproject.toml").read_text()
        for flag, value in zip(argv, argv[1:]):
            if flag == "-m":
                assert f'"{value}:' in markers, f"pytest marker {value!r} is not registered"


@pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")  # runpy of a module already imported
@pytest.mark.parametrize(("doc", "command"), COMMANDS)
def test_documented_command_parses(doc, command, monkeypatch):
    program, *argv = shlex.split(command)
    try:
        _check(program, argv, monkeypatch)
    except (SystemExit, AssertionError) as err:  # SystemExit: argparse's "unrecognized arguments" and friends
        if command not in MEANT_TO_FAIL:
            pytest.fail(f"{doc}: `{command}` does not parse or names what does not exist ({err!r})")
    else:
        assert command not in MEANT_TO_FAIL, f"{doc}: `{command}` is shown as refused, but it passes"
