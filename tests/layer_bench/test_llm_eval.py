"""LLM evaluation: answer extraction, LaTeX normalisation, code tasks through the sandbox, the pipeline.

The sandbox's own attack tests are in tests/layer_bench/test_sandbox.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from fda.bench.eval.llm import code_tasks, gsm8k, math_eval
from fda.bench.eval.llm.data import LLMEvalDataError, load_benchmark
from fda.bench.eval.llm.evaluate import MAX_NEW_TOKENS, build_prompt, evaluate_llm, score
from fda.bench.eval.llm.prompts import ALPACA_TEMPLATE, alpaca_prompt
from fda.bench.eval.llm.sandbox import CodeTask, SandboxUnavailableError, run_task

# --------------------------------------------------------------------------------------------
# GSM8K


@pytest.mark.parametrize(
    "completion,gold,ok",
    [
        ("Janet has 16 - 3 - 4 = 9 eggs, so 9 * 2 = 18 dollars.\nThe answer is: 18", "... #### 18", True),
        ("She earns $1,234.00 in total.", "#### 1234", True),
        ("The answer is: 18.\nNext question: 3 + 4 = 7", "#### 18", True),  # first number after the marker
        ("so the total is 7 and then 18", "#### 18", True),  # no marker: last number
        ("The answer is -5", "#### -5", True),
        ("The answer is: 3/4", "#### 0.75", True),
        ("The answer is: 17", "#### 18", False),
        ("I do not know.", "#### 18", False),
        ("The answer is 18.5", "#### 18", False),
    ],
)
def test_gsm8k_scoring(completion, gold, ok):
    assert gsm8k.is_correct(completion, gold) is ok


def test_gsm8k_gold_needs_the_marker():
    with pytest.raises(ValueError, match="####"):
        gsm8k.gold_answer("no marker 18")


# --------------------------------------------------------------------------------------------
# MATH


@pytest.mark.parametrize(
    "completion,gold,ok",
    [
        (r"so $x = \boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}", True),  # nested braces
        (r"\boxed{\dfrac12}", r"\frac{1}{2}", True),
        (r"\boxed{0.5}", r"\frac12", True),
        (r"\boxed{\left( 3, \frac{1}{2} \right)}", r"(3,\frac{1}{2})", True),
        (r"\boxed{10^\circ}", "10", True),
        (r"\boxed{5\text{ cm}}", "5", True),
        (r"\boxed{x = 3}", "3", True),
        (r"\boxed{3.}", "3", True),
        (r"\boxed{50\%}", "50", True),
        (r"first \boxed{2} then corrected: \boxed{4}", "4", True),  # the last box counts
        (r"The answer is: $\frac{3}{4}$", r"\frac34", True),
        (r"\boxed{\frac{2}{3}}", r"\frac{3}{2}", False),
        (r"\boxed{\sqrt{3}}", r"\sqrt{2}", False),
        (r"\boxed{4", "4", False),  # cut-off generation: unbalanced
        ("no answer at all", "4", False),
    ],
)
def test_math_scoring(completion, gold, ok):
    assert math_eval.is_correct(completion, {"solution": rf"... so \boxed{{{gold}}}."}) is ok


def test_math_boxed_extraction_and_gold_field():
    assert math_eval.last_boxed(r"\boxed{\frac{a}{b^{2}}} rest") == r"\frac{a}{b^{2}}"
    assert math_eval.last_boxed(r"\fbox{7}") == "7"
    assert math_eval.gold_answer({"answer": "12", "solution": r"\boxed{99}"}) == "12"
    with pytest.raises(ValueError, match="boxed"):
        math_eval.gold_answer({"solution": "no box"})


# --------------------------------------------------------------------------------------------
# Code post-processing and tasks

HE = {
    "task_id": "HumanEval/0",
    "prompt": 'from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    """Add two numbers."""\n',
    "entry_point": "add",
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n",
}
MBPP = {"task_id": 2, "text": "Write a function to add two numbers.", "test_list": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"], "test_setup_code": ""}


def test_extract_code_strips_fences_and_example_calls():
    completion = "Here you go:\n```python\nimport math\n\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\nassert add(1, 1) == 3\n```\nHope it helps."
    code = code_tasks.extract_code(completion)
    assert "def add" in code and "import math" in code
    assert "print(" not in code and "assert" not in code and "```" not in code


@pytest.mark.parametrize(
    "completion,ok",
    [
        ("```python\ndef add(a: int, b: int) -> int:\n    return a + b\n```", True),  # whole function
        ("    return a + b\n", True),  # body continuing the prompt
        ("```python\ndef add(a, b):\n    return a * b\n```", False),
        ("def add(a, b):\n    while True:\n        pass\n", False),
    ],
)
def test_humaneval_tasks(completion, ok):
    task = code_tasks.humaneval_task(HE, completion)
    assert task.entry_point == "add" and task.setup == HE["prompt"] and task.tests.endswith("check(add)\n")
    assert task.solution.startswith(HE["prompt"])  # the prompt's imports and helpers come first
    assert run_task(task, timeout=1.5).passed is ok


def test_humaneval_tests_use_the_prompts_helpers():
    """A completion that redefines the prompt's helper cannot make the tests easier."""
    he = {"task_id": "HumanEval/38", "entry_point": "decode",
          "prompt": 'def encode(s: str):\n    return s[::-1] + "!"\n\n\ndef decode(s: str):\n    """Invert encode."""\n',
          "test": "def check(candidate):\n    for s in ['ab', 'xyz']:\n        assert candidate(encode(s)) == s\n"}
    assert run_task(code_tasks.humaneval_task(he, "    return s[:-1][::-1]\n"), timeout=3).passed
    cheat = "```python\ndef encode(s):\n    return s\n\ndef decode(s):\n    return s\n```"
    assert not run_task(code_tasks.humaneval_task(he, cheat), timeout=3).passed
    helper = "```python\ndef decode(s):\n    out = s[:-1][::-1]\n    assert encode(out) == s  # the prompt's helper, in the candidate\n    return out\n```"
    assert run_task(code_tasks.humaneval_task(he, helper), timeout=3).passed


def test_mbpp_task_and_score_rows():
    task = code_tasks.mbpp_task({**MBPP, "test_setup_code": "BIAS = 0"}, "```python\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n```")
    assert task == CodeTask(solution="def add(a, b):\n    return a + b\n", tests="assert add(1, 2) == 3\nassert add(0, 0) == 0\n", setup="BIAS = 0")
    with pytest.raises(ValueError, match="no test_list"):
        code_tasks.mbpp_task({"task_id": 9, "test_list": []}, "")
    value, ok = score("mbpp", [MBPP, MBPP], ["```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b):\n    return 0\n"], timeout=3)
    assert ok == [True, False] and value == 0.5
    value, results = code_tasks.pass_at_1([task, code_tasks.mbpp_task(MBPP, "def add(a, b):\n    return a - b\n")], timeout=3)
    assert value == 0.5 and [r.status for r in results] == ["passed", "failed"]


# --------------------------------------------------------------------------------------------
# Data and the pipeline on a tiny random Llama


def test_prompts_follow_the_alpaca_template():
    p = build_prompt("gsm8k", {"question": "What is 2+2?"})
    assert p.startswith("Below is an instruction that describes a task.")
    assert p.endswith("### Response: Let's think step by step.")
    assert "### Instruction:\nWhat is 2+2?\n\n" in p
    assert build_prompt("humaneval", HE) == alpaca_prompt("Create a Python script for this problem:\n" + HE["prompt"])
    assert build_prompt("mbpp", MBPP).endswith("assert add(0, 0) == 0\n\n### Response:")
    assert ALPACA_TEMPLATE.count("{instruction}") == 1
    assert MAX_NEW_TOKENS == {"gsm8k": 1024, "math": 2048, "humaneval": 2048, "mbpp": 2048}


def test_missing_hub_data_fails_fast_with_instructions(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(LLMEvalDataError, match=r"openai/gsm8k.*data_path"):
        load_benchmark("gsm8k")
    assert time.perf_counter() - t0 < 20
    with pytest.raises(LLMEvalDataError, match="unknown benchmark"):
        load_benchmark("gsm9k")


def test_local_data_formats_and_field_checks(tmp_path):
    rows = [{"question": "1+1?", "answer": "#### 2"}, {"question": "2+2?", "answer": "#### 4"}]
    (tmp_path / "g.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "g.json").write_text(json.dumps(rows))
    import pandas as pd

    pd.DataFrame(rows).to_parquet(tmp_path / "g.parquet")
    for ext in ("jsonl", "json", "parquet"):
        assert load_benchmark("gsm8k", data_path=tmp_path / f"g.{ext}", limit=1) == rows[:1]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"q": 1}) + "\n")
    with pytest.raises(LLMEvalDataError, match=r"bad\.jsonl, row 0.*missing"):
        load_benchmark("gsm8k", data_path=tmp_path / "bad.jsonl")


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random LlamaForCausalLM with a byte-level BPE tokenizer trained here (offline)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tinyllm")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([ALPACA_TEMPLATE, "Let's think step by step. The answer is 42", "def add(a, b): return a + b"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(d, max_shard_size="50KB")
    return d


def test_pipeline_on_tiny_model_produces_rows(tiny_llama_dir, tmp_path):
    data = {
        "gsm8k": tmp_path / "gsm8k.jsonl",
        "math": tmp_path / "math.jsonl",
        "humaneval": tmp_path / "he.jsonl",
        "mbpp": tmp_path / "mbpp.jsonl",
    }
    data["gsm8k"].write_text("".join(json.dumps({"question": f"What is {i}+1?", "answer": f"... #### {i + 1}"}) + "\n" for i in range(3)))
    data["math"].write_text(json.dumps({"problem": "What is 1/2?", "solution": r"It is \boxed{\frac{1}{2}}."}) + "\n")
    data["humaneval"].write_text(json.dumps(HE) + "\n")
    data["mbpp"].write_text(json.dumps(MBPP) + "\n")
    rows = evaluate_llm(tiny_llama_dir, ["gsm8k", "math", "humaneval", "mbpp"], limit=2, data_path=data,
                        max_new_tokens={b: 6 for b in data}, batch_size=2, generations_dir=tmp_path / "gen", sandbox={"timeout": 3})
    assert [(r["task"], r["metric"], r["n"]) for r in rows] == [("gsm8k", "accuracy", 2), ("math", "accuracy", 1), ("humaneval", "pass@1", 1), ("mbpp", "pass@1", 1)]
    assert all(0.0 <= r["value"] <= 1.0 for r in rows)
    gen = [json.loads(line) for line in (tmp_path / "gen" / "gsm8k.jsonl").read_text().splitlines()]
    assert len(gen) == 2 and gen[0]["prompt"] == build_prompt("gsm8k", {"question": "What is 0+1?"})
    assert all(isinstance(g["completion"], str) for g in gen)


def test_unavailable_sandbox_fails_before_generation(tmp_path, monkeypatch):
    from fda.bench.eval.llm import sandbox

    data = tmp_path / "mbpp.jsonl"
    data.write_text(json.dumps(MBPP) + "\n")
    calls = []
    sandbox._backend.cache_clear()
    monkeypatch.setattr(sandbox.shutil, "which", lambda name, *a, **k: None)  # no bwrap
    try:
        with pytest.raises(SandboxUnavailableError, match="apt-get install bubblewrap"):
            evaluate_llm("unused", ["mbpp"], data_path={"mbpp": data}, generate_fn=lambda ps, n: calls.append(ps) or ["x"] * len(ps))
        assert calls == []  # nothing was generated (or scored as failed)
        with pytest.raises(TypeError):
            evaluate_llm("unused", ["mbpp"], data_path={"mbpp": data}, sandbox={"timeot": 3}, generate_fn=lambda ps, n: ["x"] * len(ps))
    finally:
        sandbox._backend.cache_clear()


def test_scoring_is_wired_to_the_extractors(tmp_path):
    """With a stub generator that answers correctly, every metric is 1 (and 0 when it answers wrongly)."""
    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "What is 1+1?", "answer": "#### 2"}) + "\n")
    right = evaluate_llm("unused", ["gsm8k"], data_path={"gsm8k": data}, generate_fn=lambda ps, n: ["The answer is: 2"] * len(ps))
    wrong = evaluate_llm("unused", ["gsm8k"], data_path={"gsm8k": data}, generate_fn=lambda ps, n: ["The answer is: 3"] * len(ps))
    assert right[0]["value"] == 1.0 and wrong[0]["value"] == 0.0
    with pytest.raises(ValueError, match="unknown benchmark"):
        evaluate_llm("unused", ["alpacaeval"])


def test_vllm_backend_missing_is_a_clear_error(tmp_path):
    pytest.importorskip("transformers")
    try:
        import vllm  # noqa: F401

        pytest.skip("vllm installed")
    except ImportError:
        pass
    from fda.bench.eval.llm.generation import generate

    with pytest.raises(RuntimeError, match="pip install vllm"):
        generate(tmp_path, ["hi"], max_new_tokens=1, backend="vllm")


def test_alpaca_eval_file_format(tmp_path):
    from fda.bench.eval.llm.alpaca_eval import write_alpaca_eval_outputs

    (tmp_path / "ae.json").write_text(json.dumps([{"instruction": "Say hi", "dataset": "helpful_base"}]))
    seen = []
    out = write_alpaca_eval_outputs(tmp_path / "ae.json", tmp_path / "out.json", generator="fda-ta",
                                    generate_fn=lambda ps, n: seen.extend(ps) or [" hi "] * len(ps))
    assert json.loads(Path(out).read_text()) == [{"instruction": "Say hi", "output": "hi", "generator": "fda-ta", "dataset": "helpful_base"}]
    assert seen == [alpaca_prompt("Say hi")]
    assert os.path.basename(out) == "out.json"
