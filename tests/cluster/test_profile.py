"""The shipped SLURM profile without a cluster (dry runs): its rule names exist, the documented
invocation loads it alone, and every job's CPU request follows its suite's needs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess

import pytest
import yaml

from test_workflow import ENV, ROOT, SNAKEMAKE, snakemake  # tests/layer_bench, on sys.path by tests/conftest.py

PROFILE_DIR = "workflow/profiles/slurm"  # as docs/workflow.md and README show it: relative to the repository
PROFILE = ROOT / PROFILE_DIR / "profile.v9+.yaml"
CONFIGS = {  # every rule set: coarse (embedded default) and fine (paper) FDA jobs
    "default": (),
    "paper": ("--configfile", str(ROOT / "config/paper.yaml")),
    "paper-coarse": ("--configfile", str(ROOT / "config/paper.yaml"), "--config", "fda_jobs=coarse"),
}


def _needs_plugin():
    """The profile names `executor: slurm`, whose options only parse with the plugin installed."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        why = 'snakemake-executor-plugin-slurm not installed: pip install -e ".[slurm]"'
        if os.environ.get("FDA_BENCH_REQUIRE_SLURM") == "1":
            pytest.fail(f"FDA_BENCH_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)


def _rule_names(tmp_path) -> set[str]:
    names: set[str] = set()
    for args in CONFIGS.values():
        proc = snakemake("--list-rules", "--workflow-profile", "none", *args, cwd=tmp_path)
        names |= {ln.strip() for ln in proc.stdout.splitlines() if re.fullmatch(r"\s*\w+\s*", ln)}
    return names


def test_every_rule_the_profile_names_exists(tmp_path):
    """Snakemake ignores `groups`/`set-resources` keys that name no rule: a renamed rule would
    silently lose its settings. Commented site examples (`#   rule: {...}`) count too."""
    text = PROFILE.read_text()
    profile = yaml.safe_load(text)
    named = set()
    for key in ("groups", "set-resources", "set-threads"):
        named |= set(profile.get(key) or {})
    named |= set(re.findall(r"^#\s+(\w+): \{", text, re.M))
    assert named
    rules = _rule_names(tmp_path)
    assert "fda_adapt" in rules and "fda_assemble" in rules  # coarse and fine both listed
    assert named <= rules, f"not rules of any config: {sorted(named - rules)}"


def _local_rules() -> set[str]:
    """Rules marked `localrule: True` (a dry run prints them as `rule` too)."""
    text = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    return set(re.findall(r"^rule (\w+):\n(?:(?!rule ).*\n)*?\s+localrule: True$", text, re.M))


def _jobs(console: str) -> list[dict]:
    """(rule, local, threads, resources) of each job a dry run prints (group members too)."""
    local = _local_rules()
    assert {"cell", "tables"} <= local
    jobs = []
    for block in re.split(r"\n(?=rule \S+:\n)", console):
        m = re.match(r"rule (\S+):\n", block)
        if not m or m.group(1) == "all":
            continue
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        jobs.append({"rule": m.group(1), "local": m.group(1) in local, "threads": int(threads.group(1)) if threads else 1,
                     "resources": dict(kv.split("=", 1) for kv in res.group(1).split(", ")) if res else {}})
    return jobs


@pytest.mark.parametrize("config", ["default", "paper"])
def test_the_documented_invocation_loads_only_this_profile_and_sizes_jobs_by_suite(config, tmp_path):
    _needs_plugin()
    # run from the repository, as documented (`--workflow-profile workflow/profiles/slurm`), with
    # the outputs in tmp_path
    cmd = [SNAKEMAKE, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "-n",
           "--workflow-profile", PROFILE_DIR, *CONFIGS[config]]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    # only this profile: not also profiles/default (2 cores, gpu=1), as `--profile` would load it
    assert f"Using workflow specific profile {PROFILE_DIR} for" in console
    assert "profiles/default" not in console

    jobs = [j for j in _jobs(console) if not j["local"]]
    assert jobs
    for job in jobs:
        res = job["resources"]
        gpus = int(res.get("gpu", 0))
        # embedded suites: the rule's threads (all they use); a GPU job: what feeds one GPU
        assert int(res["cpus_per_task"]) == (4 if gpus else job["threads"]), job
        assert "slurm_account" not in res and "slurm_partition" not in res  # site keys stay commented
    if config == "default":
        assert {j["resources"]["cpus_per_task"] for j in jobs} == {"1"} and "Group job merge_eval" in console
    else:
        assert any(int(j["resources"].get("gpu", 0)) for j in jobs)
