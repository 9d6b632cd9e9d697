"""Paper-scale GLUE suites ``robertab`` (RoBERTa-base) and ``robertal`` (RoBERTa-large).

Encoder: ``RobertaModel`` without pooler (keys ``embeddings.*``, ``encoder.layer.{l}.*``: the
``roberta.*`` part of a ``RobertaForSequenceClassification`` expert, prefix dropped). Each task's
``classifier.*`` (dense + out_proj; out_proj has 1 row for STS-B regression) is that task's head,
stored in ``head.safetensors`` and never merged.

Experts come from ``experts[task]`` or ``expert_pattern`` (``{task}`` and ``{model}`` are filled):
hub ids, local HF directories, or ``recipe:finetune``, the DARE/MergeLM recipe the paper's
experts were trained with (see :class:`GlueSettings` and docs/paper-suites.md).

Evaluation: GLUE validation splits (MNLI validation_matched), inputs truncated to 128 tokens,
metrics of :mod:`fda.bench.eval.glue_metrics`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from fda.io.checkpoints import load_state_dict, save_state_dict, write_json_atomic
from fda.bench.eval.glue_metrics import GLUE_TASKS, HEADLINE, NUM_LABELS, glue_metrics, metric_rows
from fda.bench.eval.outcomes import Outcome
from fda.bench.sources import (
    DatasetSpec,
    SourceError,
    atomic_dir,
    open_task_split,
    parse_settings,
    parse_source,
    prepare_task_data,
    resolve_device,
    resolve_model_dir,
    tensor_specs,
    torch_dtype,
    verify_source_sha256,
    verify_specs,
)
from fda.bench.suites.base import Row, StateDict, Suite, no_expert_seeds, training_seed

MODELS = {"robertab": ("FacebookAI/roberta-base", "roberta-base"), "robertal": ("FacebookAI/roberta-large", "roberta-large")}
DISPLAY = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI", "rte": "RTE"}
TEXT_KEYS = {"cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
             "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
             "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2")}
EVAL_SPLIT = {t: ("validation_matched" if t == "mnli" else "validation") for t in GLUE_TASKS}


def _h(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class GlueSettings:
    """Settings of the RoBERTa GLUE suites. Recipe defaults follow DARE/MergeLM's train_plms_glue."""

    base: str | None = _h("base model source; default hf:FacebookAI/roberta-base / -large", default=None)
    experts: dict[str, str] = _h("per-task expert source {task: hub id, local dir or recipe:finetune}", default_factory=dict)
    expert_pattern: str = _h("expert source for tasks not in `experts`; {task} and {model} are filled", default="recipe:finetune")
    tasks: list[str] | None = _h("subset of tasks, in table order (default all eight)", default=None)
    dataset: str = _h("GLUE hub id (config = task name)", default="nyu-mll/glue")
    datasets: dict[str, str] = _h("per-task dataset overrides {task: hub id or save_to_disk DatasetDict dir}", default_factory=dict)
    eval_splits: dict[str, str] = _h("per-task evaluation split overrides (default validation; mnli validation_matched)", default_factory=dict)
    max_length: int = _h("tokenizer truncation length", default=128)
    padding: Literal["longest", "max_length"] = _h("pad per batch (same results, faster) or to max_length", default="longest")
    batch_size: int = _h("evaluation batch size", default=128)
    device: str = _h("auto (cuda if available), cpu, cuda, ...", default="auto")
    limit: int | None = _h("evaluate only the first N examples per task", default=None)
    copy_data: bool = _h("prepare_data copies splits with save_to_disk (else a source.json marker)", default=False)
    sha256: dict[str, Any] = _h("expected sha256 per source {base|task: hash or {file: hash}}", default_factory=dict)
    check_dtype: bool = _h("require expert dtypes to equal the base's (false: cast experts to the base dtype)", default=True)
    dtype: str = _h("precision the base is loaded and stored in: float32 (paper), bfloat16, float16 or auto (the checkpoint's)", default="float32")
    progress: bool = _h("tqdm progress bars", default=True)
    # fine-tuning recipe (recipe:finetune)
    lr: float = _h("recipe: AdamW learning rate", default=1e-5)
    epochs: int = _h("recipe: epochs", default=10)
    train_batch_size: int = _h("recipe: batch size", default=16)
    warmup_ratio: float = _h("recipe: linear warmup fraction of all steps, then linear decay to 0", default=0.06)
    weight_decay: float = _h("recipe: AdamW weight decay (not on biases and LayerNorm weights)", default=0.01)
    val_fraction: float = _h("recipe: fraction of train held out (permutation seed 0) to pick the best epoch", default=0.1)
    max_train_samples: int | None = _h("recipe: cap on training examples (quick runs)", default=None)
    max_val_samples: int | None = _h("recipe: cap on held-out examples (quick runs)", default=None)

    @classmethod
    def smoke(cls, **overrides: Any) -> GlueSettings:
        """A quick-look variant: two tasks, 64 evaluation examples."""
        return parse_settings(cls, {"tasks": ["rte", "mrpc"], "limit": 64, **overrides}, suite="glue")


class GlueSuite(Suite):
    """Shared implementation of ``robertab`` / ``robertal``."""

    family = "roberta"
    #: GLUE's validation split is this suite's test split (as in the paper); its selection split is
    #: the recipe's held-out slice of train (selection_unavailable), for experts fine-tuned here only
    no_validation = None
    model_key: str = "robertab"

    def __init__(self, settings: dict[str, Any] | GlueSettings | None = None):
        self.cfg: GlueSettings = parse_settings(GlueSettings, settings, suite=self.name)
        super().__init__(dataclasses.asdict(self.cfg))  # the validated section, defaults filled in
        unknown = [t for t in (self.cfg.tasks or []) if t not in GLUE_TASKS]
        for key in ("experts", "datasets", "eval_splits"):
            unknown += [t for t in getattr(self.cfg, key) if t not in GLUE_TASKS]
        if unknown:
            raise ValueError(f"suite '{self.name}': unknown task(s) {sorted(set(unknown))}; valid tasks: {GLUE_TASKS}")

    # ------------------------------------------------------------------ names
    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.tasks or GLUE_TASKS)

    @property
    def display_names(self) -> dict[str, str]:
        return {t: DISPLAY[t] for t in self.tasks}

    @property
    def base_source(self) -> str:
        return self.cfg.base or f"hf:{MODELS[self.model_key][0]}"

    #: RoBERTa's q/k/v are separate Linear layers in every implementation the paper builds on
    qkv_layout = "split"

    def to_merge_layout(self, state: StateDict) -> StateDict:
        """Identity: GLUE merges run on the HF layout (same interface as the CLIP suites)."""
        return dict(state)

    def from_merge_layout(self, state: StateDict) -> StateDict:
        return dict(state)

    def expert_spec(self, task: str) -> str:
        return self.cfg.experts.get(task) or self.cfg.expert_pattern.format(task=task, model=MODELS[self.model_key][1])

    def provenance(self) -> dict[str, str]:
        sources = {self._source_kind(t) for t in self.tasks}
        return {"expert_source": "+".join(sorted(sources)), "qkv_layout": self.qkv_layout, "base_source": self.base_source}

    def _source_kind(self, task: str) -> str:
        kind = parse_source(self.expert_spec(task)).kind
        return "finetune" if kind == "recipe" else kind

    def _spec(self, task: str, split: str) -> DatasetSpec:
        if task in self.cfg.datasets:
            return DatasetSpec(self.cfg.datasets[task], None, split)
        return DatasetSpec(self.cfg.dataset, task, split)

    def _eval_spec(self, task: str) -> DatasetSpec:
        return self._spec(task, self.cfg.eval_splits.get(task, EVAL_SPLIT[task]))

    # ------------------------------------------------------------------ data
    def prepare_data(self, out_dir: Path, seed: int) -> None:
        """Resolve each task's validation split (and train split when its expert is fine-tuned
        here); write a ``source.json`` marker, or a ``save_to_disk`` copy with ``copy_data``.
        The recipe's held-out split is a fixed permutation (seed 0, as MergeLM), so ``seed`` is unused."""
        for task in self.tasks:
            specs = {"eval": self._eval_spec(task)}
            if self._source_kind(task) == "finetune":
                specs["train"] = self._spec(task, "train")
            prepare_task_data(Path(out_dir) / task, specs, copy=self.cfg.copy_data)

    def _split(self, data_dir: Path | None, task: str, which: str):
        spec = self._eval_spec(task) if which == "eval" else self._spec(task, "train")
        return open_task_split(Path(data_dir) / task if data_dir else None, which, spec)

    # ------------------------------------------------------------------ base
    def prepare_base(self, out_dir: Path, data_dir: Path, seed: int) -> None:
        """Write the base ``RobertaModel`` (no pooler) and its tokenizer as an HF directory."""
        from transformers import AutoTokenizer, RobertaModel  # noqa: PLC0415

        src = resolve_model_dir(self.base_source)
        self._check_sha(src, "base")
        model = RobertaModel.from_pretrained(str(src), add_pooling_layer=False, dtype=torch_dtype(self.cfg.dtype))
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(str(tmp))
            AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(tmp))
            write_json_atomic({**self.provenance(), "seed": seed}, tmp / "provenance.json")

    # ------------------------------------------------------------------ experts
    def prepare_expert(self, task: str, base_dir: Path, data_dir: Path, out_dir: Path, seed: int,
                       expert_seed: int = 0) -> None:
        """Fetch a ``RobertaForSequenceClassification`` expert (hub/local) or fine-tune one with the
        recipe; write its encoder (HF dir, base config) and ``head.safetensors`` (``classifier.*``).
        ``expert_seed`` changes the recipe's randomness (:func:`training_seed`); a fetched expert
        has only expert seed 0."""
        self._check_task(task)
        base_dir = Path(base_dir)
        spec = self.expert_spec(task)
        base_specs = tensor_specs(load_state_dict(base_dir))
        info: dict[str, Any] = {"task": task, "source": spec, "seed": seed, "expert_seed": expert_seed}
        if parse_source(spec).kind == "recipe":
            if parse_source(spec).value != "finetune":
                raise SourceError(f"suite '{self.name}': unknown recipe '{spec}'; the GLUE suites know recipe:finetune")
            encoder, head, info["recipe"] = self.finetune(task, base_dir, data_dir, training_seed(seed, expert_seed))
            encoder = {k: v.to(base_specs[k][1]) for k, v in encoder.items()}  # trained in fp32, stored like the base
            where = f"recipe:finetune ({task})"
        else:
            no_expert_seeds(self.name, expert_seed, f"the expert of task '{task}' is fetched ({spec})")
            path = resolve_model_dir(spec)
            self._check_sha(path, task)
            encoder, head = split_classifier(load_state_dict(path), where=str(path))
            where = str(path)
        verify_specs(tensor_specs(encoder), base_specs, where=where, check_dtype=self.cfg.check_dtype)
        encoder = {k: v.to(base_specs[k][1]) if v.is_floating_point() else v for k, v in encoder.items()}  # no-op unless check_dtype is off
        n_out = head["out_proj.weight"].shape[0]
        if n_out != NUM_LABELS[task]:
            raise SourceError(f"{where}: 'classifier.out_proj.weight' has {n_out} rows but GLUE {task} needs {NUM_LABELS[task]} labels; wrong task's expert?")
        with atomic_dir(out_dir) as tmp:
            save_state_dict(encoder, tmp / "model.safetensors", metadata={"format": "pt", "source": spec})
            (tmp / "config.json").write_text((base_dir / "config.json").read_text())
            save_state_dict(head, tmp / "head.safetensors", metadata={"task": task, "num_labels": str(n_out), "kind": "roberta-classifier"})
            write_json_atomic({**self.provenance(), **info}, tmp / "provenance.json")

    def selection_unavailable(self) -> str | None:
        """None when every task's expert is fine-tuned here (``recipe:finetune``): the selection split
        is then the recipe's held-out slice of train (:meth:`heldout_indices`), which the experts
        never trained on. A fetched expert may have trained on any part of GLUE's train split."""
        fetched = [t for t in self.tasks if self._source_kind(t) != "finetune"]
        if not fetched:
            return None
        return (f"GLUE's validation split is this suite's test split (as in the paper), and the experts of "
                f"{', '.join(fetched)} are fetched, so no slice of the train split is known to be held out from "
                "them; only experts fine-tuned here (recipe:finetune) give a selection split (docs/selection.md)")

    def heldout_indices(self, n: int) -> np.ndarray:
        """Indices into a train split of ``n`` rows that the recipe holds out (permutation seed 0,
        the last ``val_fraction``, capped at ``max_val_samples``): its best-epoch choice and, for
        selection, ``evaluate(split="validation")`` score them."""
        perm = np.random.RandomState(0).permutation(n)
        va_idx = perm[int((1 - self.cfg.val_fraction) * n):]
        return va_idx[: self.cfg.max_val_samples] if self.cfg.max_val_samples is not None else va_idx

    def _check_sha(self, path: Path, label: str) -> None:
        verify_source_sha256(path, self.cfg.sha256.get(label))

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"suite '{self.name}': unknown task '{task}'; tasks: {self.tasks}")

    # ------------------------------------------------------------------ the fine-tuning recipe
    def finetune(self, task: str, base_dir: Path, data_dir: Path, seed: int) -> tuple[StateDict, StateDict, dict[str, Any]]:
        """DARE/MergeLM recipe: AdamW (lr 1e-5, wd 0.01 except biases/LayerNorm), linear warmup over
        6% of the steps then linear decay, batch 16, 10 epochs, max_len 128; 10% of train held out
        (permutation seed 0) and the epoch with the best headline metric on it is kept.
        Returns ``(encoder state, classifier state, summary)``."""
        from transformers import AutoTokenizer, RobertaConfig, RobertaForSequenceClassification  # noqa: PLC0415

        c = self.cfg
        device = resolve_device(c.device)
        train = self._split(data_dir, task, "train")
        perm = np.random.RandomState(0).permutation(len(train))
        n_train = int((1 - c.val_fraction) * len(train))
        tr_idx, va_idx = perm[:n_train], self.heldout_indices(len(train))
        if c.max_train_samples is not None:
            tr_idx = tr_idx[: c.max_train_samples]
        if len(tr_idx) == 0 or len(va_idx) == 0:
            raise ValueError(f"{task}: recipe needs training and held-out examples (got {len(tr_idx)} / {len(va_idx)})")
        tr, va = train.select(tr_idx.tolist()), train.select(va_idx.tolist())

        torch.manual_seed((seed * 1_000_003 + zlib.crc32(f"{task}/finetune".encode())) % (2**31 - 1))
        config = RobertaConfig.from_pretrained(str(base_dir), num_labels=NUM_LABELS[task])
        model = RobertaForSequenceClassification(config)  # fresh classifier, seeded
        model.roberta.load_state_dict(load_state_dict(base_dir), strict=False)
        _check_loaded(model.roberta, load_state_dict(base_dir), where=str(base_dir))
        model.to(device)
        tok = AutoTokenizer.from_pretrained(str(base_dir))

        no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm.weight" in n]
        decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm.weight" in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": c.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=c.lr)
        steps_per_epoch = math.ceil(len(tr) / c.train_batch_size)
        total = steps_per_epoch * c.epochs
        warmup = math.ceil(c.warmup_ratio * total)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: s / max(1, warmup) if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))
        gen = torch.Generator().manual_seed(seed)
        best: tuple[float, int, dict] = (-math.inf, -1, {})
        history = []
        for epoch in range(c.epochs):
            model.train()
            order = torch.randperm(len(tr), generator=gen).tolist()
            for i in tqdm(range(0, len(order), c.train_batch_size), desc=f"{self.name}/{task} epoch {epoch + 1}", disable=not c.progress, leave=False):
                rows = tr[order[i: i + c.train_batch_size]]
                batch = self._encode(tok, task, rows, device)
                out = model(**batch, labels=_labels(task, rows["label"], device))
                out.loss.backward()
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            preds, labels = self._predict(model, tok, task, va, device)
            score = glue_metrics(task, preds, labels)[HEADLINE[task]]
            history.append(score)
            if score > best[0]:
                best = (score, epoch, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        state = best[2]
        encoder = {k[len("roberta."):]: v for k, v in state.items() if k.startswith("roberta.")}
        head = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
        summary = {"lr": c.lr, "epochs": c.epochs, "batch_size": c.train_batch_size, "warmup_ratio": c.warmup_ratio,
                   "weight_decay": c.weight_decay, "train_examples": len(tr), "heldout_examples": len(va),
                   "best_epoch": best[1] + 1, "heldout_scores": history, "metric": HEADLINE[task]}
        return encoder, head, summary

    # ------------------------------------------------------------------ model and evaluation
    def load_encoder(self, model_dir: Path) -> nn.Module:
        """``RobertaModel`` (no pooler) with eager attention (FDA needs double backward)."""
        from transformers import RobertaModel  # noqa: PLC0415

        return RobertaModel.from_pretrained(str(model_dir), add_pooling_layer=False, attn_implementation="eager").eval()

    def evaluate(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, expert_dir: Path,
                 *, limit: int | None = None, split: str = "test") -> list[Row]:
        """GLUE metrics of ``encoder_state`` with ``expert_dir/head.safetensors`` on GLUE's validation
        split, which is this suite's *test* split; ``split="validation"``: the recipe's held-out slice of
        train, when every expert is fine-tuned here (:meth:`selection_unavailable`). The headline row
        carries the per-example ``outcome``."""
        preds, labels = self.predict(encoder_state, task, base_dir, data_dir, expert_dir, limit=limit, split=split)
        rows = metric_rows(task, preds, labels)
        rows[0]["outcome"] = Outcome(np.asarray(preds), np.asarray(labels), rows[0]["metric"])  # headline: recomputable
        return rows

    def predict(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, head_dir: Path,
                *, limit: int | None = None, split: str = "test") -> tuple[list, list]:
        """Predictions (class ids; floats for stsb) and labels on ``task``'s GLUE validation split
        (our test split; ``split="validation"``: the recipe's held-out slice of train) with the head
        in ``head_dir``."""
        split = self.check_split(split)
        from transformers import AutoTokenizer  # noqa: PLC0415

        self._check_task(task)
        device = resolve_device(self.cfg.device)
        model = build_classifier(base_dir, encoder_state, load_state_dict(Path(head_dir) / "head.safetensors"), where=f"{self.name}/{task}")
        model.to(device)
        tok = AutoTokenizer.from_pretrained(str(base_dir))
        if split == "validation":
            train = self._split(data_dir, task, "train")
            ds = train.select(self.heldout_indices(len(train)).tolist())
        else:
            ds = self._split(data_dir, task, "eval")
        limit = limit if limit is not None else self.cfg.limit
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        return self._predict(model, tok, task, ds, device)

    def _encode(self, tok, task: str, rows: dict, device: torch.device) -> dict[str, torch.Tensor]:
        a, b = TEXT_KEYS[task]
        enc = tok(rows[a], rows[b] if b else None, truncation=True, max_length=self.cfg.max_length,
                  padding=self.cfg.padding, return_tensors="pt")
        return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}

    @torch.no_grad()
    def _predict(self, model, tok, task: str, ds, device: torch.device) -> tuple[list, list]:
        model.eval()
        preds: list = []
        for i in tqdm(range(0, len(ds), self.cfg.batch_size), desc=f"{self.name}/{task}", disable=not self.cfg.progress, leave=False):
            rows = ds[i: i + self.cfg.batch_size]
            logits = model(**self._encode(tok, task, rows, device)).logits.float()
            preds += logits[:, 0].tolist() if task == "stsb" else logits.argmax(dim=-1).tolist()
        if len(ds) == 0:
            raise ValueError(f"task '{task}': the evaluation split is empty")
        return preds, list(ds["label"])


def _labels(task: str, labels: list, device: torch.device) -> torch.Tensor:
    dtype = torch.float32 if task == "stsb" else torch.long
    return torch.tensor(labels, dtype=dtype, device=device)


def split_classifier(state: StateDict, *, where: str) -> tuple[StateDict, StateDict]:
    """``RobertaForSequenceClassification`` state → (encoder without ``roberta.`` prefix and
    without pooler, head without ``classifier.`` prefix). Raises naming ``where`` if either is absent."""
    encoder = {k[len("roberta."):]: v for k, v in state.items() if k.startswith("roberta.") and not k.startswith("roberta.pooler.")}
    head = {k[len("classifier."):]: v for k, v in state.items() if k.startswith("classifier.")}
    if not encoder:
        raise SourceError(f"{where}: no 'roberta.*' tensors; expected a RobertaForSequenceClassification checkpoint")
    need = {"dense.weight", "dense.bias", "out_proj.weight", "out_proj.bias"}
    if set(head) != need:
        raise SourceError(f"{where}: classifier tensors {sorted('classifier.' + k for k in head)} != expected "
                          f"{sorted('classifier.' + k for k in need)} (RobertaClassificationHead)")
    return encoder, head


def _check_loaded(module: nn.Module, state: StateDict, *, where: str) -> None:
    own = module.state_dict()
    buffers = {n for n, _ in module.named_buffers()}
    missing = sorted(k for k in own if k not in state and k not in buffers)
    extra = sorted(k for k in state if k not in own)
    if missing or extra:
        raise ValueError(f"{where}: keys do not match RobertaModel (no pooler): missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{where}: tensor '{k}' has shape {tuple(v.shape)}, the base encoder has {tuple(own[k].shape)}")


def build_classifier(base_dir: Path, encoder_state: StateDict, head_state: StateDict, *, where: str) -> nn.Module:
    """``RobertaForSequenceClassification`` with ``encoder_state`` in ``.roberta`` and the task head
    in ``.classifier`` (num_labels from the head; 1 → regression)."""
    from transformers import RobertaConfig, RobertaForSequenceClassification  # noqa: PLC0415

    n = int(head_state["out_proj.weight"].shape[0])
    config = RobertaConfig.from_pretrained(str(base_dir), num_labels=n)
    config.problem_type = "regression" if n == 1 else "single_label_classification"
    model = RobertaForSequenceClassification(config)
    _check_loaded(model.roberta, encoder_state, where=f"{where} encoder state")
    model.roberta.load_state_dict(encoder_state, strict=False)
    model.classifier.load_state_dict(head_state, strict=True)
    return model.eval()


class RobertaBaseSuite(GlueSuite):
    name = "robertab"
    model_key = "robertab"


class RobertaLargeSuite(GlueSuite):
    name = "robertal"
    model_key = "robertal"
