"""Greedy generation: batched HF transformers (left padding) or vLLM (optional, imported lazily)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence


def generate_hf(model_dir: str | os.PathLike, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 8,
                device: str | None = None, dtype: str = "auto", model=None, tokenizer=None) -> list[str]:  # noqa: ANN001
    """Greedy completions (new text only) for ``prompts``, batched with left padding.

    Prompts are sorted by length so each batch pads little; results come back in input order.
    ``model``/``tokenizer`` may be passed to reuse loaded objects.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.padding_side = "left"  # decoder-only: the new tokens must follow the prompt directly
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    out: list[str] = [""] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
        with torch.inference_mode():
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        new = gen[:, enc["input_ids"].shape[1]:]
        for i, text in zip(idx, tokenizer.batch_decode(new, skip_special_tokens=True)):
            out[i] = text
    return out


def generate_vllm(model_dir: str | os.PathLike, prompts: Sequence[str], *, max_new_tokens: int, tensor_parallel_size: int = 1) -> list[str]:
    """Greedy completions with vLLM (temperature 0, top_p 1), as the official evaluation."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:
        raise RuntimeError("backend='vllm' needs vLLM (GPU): `pip install vllm`, or use backend='hf'") from err
    llm = LLM(model=str(model_dir), tensor_parallel_size=tensor_parallel_size)
    outs = llm.generate(list(prompts), SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens))
    return [o.outputs[0].text for o in outs]


def make_generator(model_dir: str | os.PathLike, *, backend: str = "hf", batch_size: int = 8, device: str | None = None,
                   dtype: str = "auto", tensor_parallel_size: int = 1) -> Callable[[list[str], int], list[str]]:
    """A ``(prompts, max_new_tokens) -> completions`` function that loads the model once, on first use."""
    if backend not in ("hf", "vllm"):
        raise ValueError(f"unknown generation backend {backend!r}; valid: hf, vllm")
    cache: dict[str, object] = {}

    def run(prompts: list[str], max_new_tokens: int) -> list[str]:
        if backend == "vllm":
            try:
                from vllm import LLM, SamplingParams
            except ImportError as err:
                raise RuntimeError("backend='vllm' needs vLLM (GPU): `pip install vllm`, or use backend='hf'") from err
            if "llm" not in cache:
                cache["llm"] = LLM(model=str(model_dir), tensor_parallel_size=tensor_parallel_size)
            outs = cache["llm"].generate(list(prompts), SamplingParams(temperature=0.0, top_p=1.0, max_tokens=max_new_tokens))  # type: ignore[attr-defined]
            return [o.outputs[0].text for o in outs]
        if "model" not in cache:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
            cache["tokenizer"] = AutoTokenizer.from_pretrained(str(model_dir))
            cache["model"] = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(dev)
            cache["device"] = dev
        return generate_hf(model_dir, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, device=cache["device"],  # type: ignore[arg-type]
                           model=cache["model"], tokenizer=cache["tokenizer"])

    return run


def generate(model_dir: str | os.PathLike, prompts: Sequence[str], *, max_new_tokens: int, backend: str = "hf", **kwargs: object) -> list[str]:
    """Dispatch to :func:`generate_hf` or :func:`generate_vllm`."""
    if backend == "hf":
        return generate_hf(model_dir, prompts, max_new_tokens=max_new_tokens, **kwargs)  # type: ignore[arg-type]
    if backend == "vllm":
        return generate_vllm(model_dir, prompts, max_new_tokens=max_new_tokens, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown generation backend {backend!r}; valid: hf, vllm")
