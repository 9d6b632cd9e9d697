"""Evaluation: zero-shot CLIP heads, GLUE metrics, and LLM benchmarks with sandboxed code (``llm``)."""
