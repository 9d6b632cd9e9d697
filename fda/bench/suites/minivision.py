"""``minivision``: the CLIP-ViT analogue. A small HF ``CLIPVisionModel`` (28x28 grayscale, patch 7
-> 16 patches + CLS = 17 tokens) pretrained here on real Fashion-MNIST images, and eight image
classification tasks derived from Fashion-MNIST and scikit-learn's digits.

Each task's head is frozen and computed from the PRETRAINED encoder: L2-normalised class
prototypes of its train split's pooled features (the offline analogue of CLIP's zero-shot
heads). Experts fine-tune the encoder with that head frozen (the Task Arithmetic recipe).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fda.io.checkpoints import write_json_atomic
from fda.bench.eval.outcomes import Outcome
from fda.bench.suites import assets
from fda.bench.suites.base import Row, StateDict, Suite, training_seed
from fda.bench.suites.common import load_encoder_state, load_split, task_seed
from fda.bench.suites.heads import HEAD_FILE, apply_head, load_head, prototype_head, save_head
from fda.bench.suites.splits import balanced_split, save_dataset_dict
from fda.io.atomic import atomic_dir
from fda.bench.suites.training import seeded, train

if TYPE_CHECKING:
    import datasets

FASHION_CLASSES = ["tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
DIGIT_CLASSES = [str(i) for i in range(10)]
PRETRAIN_DIR = "pretrain"  # data_dir/pretrain: the base model's pretraining images (not a task)


def _rot90(x: np.ndarray) -> np.ndarray:
    return np.rot90(x, 1, axes=(1, 2))


def _vflip(x: np.ndarray) -> np.ndarray:
    return x[:, ::-1, :]


def _invert(x: np.ndarray) -> np.ndarray:
    return 255 - x


def _quadrants(x: np.ndarray) -> np.ndarray:
    """Swap the 14x14 quadrants diagonally (top-left <-> bottom-right, top-right <-> bottom-left)."""
    return np.roll(x, (14, 14), axis=(1, 2))


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclass(frozen=True)
class TaskSpec:
    source: str  # "fashion" or "digits"
    transform: Callable[[np.ndarray], np.ndarray]
    classes: tuple[str, ...]
    relabel: Callable[[np.ndarray], np.ndarray] | None = None  # source label -> task label
    doc: str = ""


_PAIRS = tuple(f"{FASHION_CLASSES[i]}+{FASHION_CLASSES[i + 5]}" for i in range(5))

TASKS: dict[str, TaskSpec] = {
    "fashionrot": TaskSpec("fashion", _rot90, tuple(FASHION_CLASSES), doc="Fashion-MNIST rotated 90 degrees"),
    "fashionflip": TaskSpec("fashion", _vflip, tuple(FASHION_CLASSES), doc="Fashion-MNIST upside down"),
    "fashioninv": TaskSpec("fashion", _invert, tuple(FASHION_CLASSES), doc="Fashion-MNIST, inverted intensities"),
    "fashionquad": TaskSpec("fashion", _quadrants, tuple(FASHION_CLASSES), doc="Fashion-MNIST, quadrants swapped diagonally"),
    "fashionpairs": TaskSpec("fashion", _identity, _PAIRS, relabel=lambda y: y % 5,
                             doc="upright Fashion-MNIST, 5 classes each pairing two unrelated garments (label mod 5)"),
    "digits": TaskSpec("digits", _identity, tuple(DIGIT_CLASSES), doc="scikit-learn digits, 8x8 upsampled to 28x28"),
    "digitsinv": TaskSpec("digits", _invert, tuple(DIGIT_CLASSES), doc="digits upsampled, inverted intensities"),
    "digitsrot": TaskSpec("digits", _rot90, tuple(DIGIT_CLASSES), doc="digits upsampled, rotated 90 degrees"),
}


@dataclass(frozen=True)
class MinivisionSettings:
    """Settings of the ``minivision`` suite (the ``suites.minivision`` section of the config)."""

    fashion_mnist: str = field(default=assets.FASHION_DEFAULT_DIR, metadata={
        "help": "directory (or URL) holding the four gzipped Fashion-MNIST IDX files"})
    tasks: tuple[str, ...] = field(default=tuple(TASKS), metadata={"help": f"subset of {list(TASKS)}, in table order"})
    hidden_size: int = field(default=128, metadata={"help": "ViT width", "ge": 1})
    num_layers: int = field(default=4, metadata={"help": "ViT depth (residual blocks)", "ge": 1})
    num_heads: int = field(default=4, metadata={"help": "attention heads", "ge": 1})
    mlp_ratio: int = field(default=4, metadata={"help": "MLP width / ViT width", "ge": 1})
    patch_size: int = field(default=7, metadata={"help": "patch size on 28x28 images (7: 17 tokens)", "ge": 1})
    pretrain_per_class: int = field(default=1000, metadata={"help": "Fashion-MNIST images per class for base pretraining", "ge": 1})
    pretrain_steps: int = field(default=300, metadata={"help": "base pretraining steps (throwaway linear head)", "ge": 1})
    pretrain_batch_size: int = field(default=128, metadata={"help": "base pretraining batch size", "ge": 1})
    pretrain_lr: float = field(default=1e-3, metadata={"help": "base pretraining peak learning rate", "gt": 0})
    train_per_class: int = field(default=300, metadata={"help": "train images per class (digits tasks: capped at digits_train_per_class)", "ge": 1})
    val_per_class: int = field(default=20, metadata={"help": "validation images per class (all tasks)", "ge": 1})
    test_per_class: int = field(default=100, metadata={"help": "test images per class (digits tasks: capped at digits_test_per_class)", "ge": 1})
    digits_train_per_class: int = field(default=110, metadata={"help": "cap for digits tasks (174 images in the smallest class)", "ge": 1})
    digits_test_per_class: int = field(default=44, metadata={"help": "cap for digits tasks", "ge": 1})
    steps: int = field(default=150, metadata={"help": "fine-tuning steps per expert", "ge": 1})
    batch_size: int = field(default=64, metadata={"help": "fine-tuning batch size", "ge": 1})
    lr: float = field(default=1e-3, metadata={"help": "fine-tuning peak learning rate", "gt": 0})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay (Task Arithmetic recipe)", "ge": 0})
    warmup_frac: float = field(default=0.1, metadata={"help": "fraction of steps of linear warm-up (then cosine)", "ge": 0, "le": 1})
    logit_scale: float = field(default=30.0, metadata={"help": "scale of the cosine logits of the frozen prototype heads", "gt": 0})
    eval_batch_size: int = field(default=512, metadata={"help": "evaluation batch size", "ge": 1})

    def __post_init__(self) -> None:
        from fda.bench.settings import check_ranges  # noqa: PLC0415

        check_ranges(self)  # the ranges stated in the fields' metadata
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown or not self.tasks:
            raise ValueError(f"minivision: unknown task(s) {unknown}; valid: {list(TASKS)}")
        if 28 % self.patch_size or self.hidden_size % self.num_heads:
            raise ValueError("minivision: patch_size must divide 28 and num_heads must divide hidden_size")

    @classmethod
    def smoke(cls, **overrides: Any) -> MinivisionSettings:
        """A tiny variant for tests and quick looks: 3 tasks, a 2-layer width-64 ViT, few steps."""
        base = dict(tasks=("fashionrot", "fashionpairs", "digits"), hidden_size=64, num_layers=2, num_heads=2,
                    pretrain_per_class=60, pretrain_steps=20, pretrain_batch_size=64, train_per_class=24,
                    val_per_class=4, test_per_class=16, digits_train_per_class=24, digits_test_per_class=16,
                    steps=8, batch_size=32)
        base.update(overrides)
        return cls(**base)


def _digits_28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn digits as uint8 [1797, 28, 28] (8x8, values 0..16, bilinear-upsampled) and labels."""
    from sklearn.datasets import load_digits  # noqa: PLC0415

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    up = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    return (up.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), d.target.astype(np.int64)


def _to_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 [n, 28, 28] -> float pixel_values [n, 1, 28, 28] in [-1, 1]."""
    return (images.float().unsqueeze(1) / 127.5) - 1.0


def _image_features() -> datasets.Features:
    # datasets, transformers and sklearn are imported where used: a job pays only for what its
    # command runs (a merge or FDA job builds the suite but reads no data).
    import datasets  # noqa: PLC0415

    return datasets.Features({"image": datasets.Array2D(shape=(28, 28), dtype="uint8"), "label": datasets.Value("int64")})


class MinivisionSuite(Suite):
    name = "minivision"
    family = "clip-vision"
    Settings = MinivisionSettings

    def __init__(self, settings: dict[str, Any] | MinivisionSettings | None = None):
        from fda.bench.settings import parse  # noqa: PLC0415

        cfg = settings if isinstance(settings, MinivisionSettings) else parse(MinivisionSettings, settings, suite=self.name)
        super().__init__(dataclasses.asdict(cfg))
        self.cfg = cfg
        self._model_cache: dict[str, nn.Module] = {}
        self._data_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._loaded: tuple[nn.Module, StateDict] | None = None  # (evaluation model, the state copied into it)

    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.tasks)

    def classes(self, task: str) -> list[str]:
        return list(TASKS[task].classes)

    # ---------------------------------------------------------------------------------- data

    def prepare_data(self, out_dir: Path, seed: int) -> None:
        """Write ``out_dir/pretrain`` (base pretraining images) and, per task, a DatasetDict
        (train/validation/test) with ``image`` uint8 [28, 28] (already transformed) and ``label``.

        Fashion-MNIST tasks and the pretraining set use disjoint images: train/validation come
        from the official training set, test from the official test set. The three digits tasks
        each split the 1,797 digits on their own (their images overlap across tasks)."""
        c = self.cfg
        fm = assets.load_fashion_mnist(c.fashion_mnist)
        train_y, test_y = fm["train_labels"].astype(np.int64), fm["test_labels"].astype(np.int64)
        used_train = balanced_split(train_y, {"train": c.pretrain_per_class}, task_seed(seed, PRETRAIN_DIR, "split"))["train"]
        self._write(Path(out_dir) / PRETRAIN_DIR, {"train": (fm["train_images"][used_train], train_y[used_train])})
        used_test = np.zeros(0, dtype=np.int64)
        digits_x, digits_y = None, None
        for task in self.tasks:
            spec = TASKS[task]
            s = task_seed(seed, task, "split")
            if spec.source == "fashion":
                tv = balanced_split(train_y, {"train": c.train_per_class, "validation": c.val_per_class}, s, exclude=used_train)
                te = balanced_split(test_y, {"test": c.test_per_class}, s, exclude=used_test)["test"]
                used_train = np.concatenate([used_train, tv["train"], tv["validation"]])
                used_test = np.concatenate([used_test, te])
                parts = {"train": (fm["train_images"][tv["train"]], train_y[tv["train"]]),
                         "validation": (fm["train_images"][tv["validation"]], train_y[tv["validation"]]),
                         "test": (fm["test_images"][te], test_y[te])}
            else:
                if digits_x is None:
                    digits_x, digits_y = _digits_28()
                idx = balanced_split(digits_y, {"train": min(c.train_per_class, c.digits_train_per_class),
                                                "validation": c.val_per_class,
                                                "test": min(c.test_per_class, c.digits_test_per_class)}, s)
                parts = {k: (digits_x[v], digits_y[v]) for k, v in idx.items()}
            parts = {k: (np.ascontiguousarray(spec.transform(x)), spec.relabel(y) if spec.relabel else y)
                     for k, (x, y) in parts.items()}
            self._write(Path(out_dir) / task, parts, classes=list(spec.classes))
        write_json_atomic({"suite": self.name, "seed": seed, "settings": self.settings, "tasks": self.tasks},
                          Path(out_dir) / "suite.json")

    @staticmethod
    def _write(path: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str] | None = None) -> None:
        import datasets  # noqa: PLC0415

        feats = _image_features()
        if classes is not None:
            feats["label"] = datasets.ClassLabel(names=classes)
        dd = datasets.DatasetDict({k: datasets.Dataset.from_dict({"image": x, "label": y.tolist()}, features=feats)
                                   for k, (x, y) in parts.items()})
        save_dataset_dict(dd, path)

    def _arrays(self, data_dir: Path, task: str, split: str, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images uint8 [n, 28, 28] and labels [n] of a split (cached)."""
        key = (str(Path(data_dir).resolve()), task, split, limit)
        if key not in self._data_cache:
            ds = load_split(data_dir, task, split)
            if limit is not None:
                ds = ds.select(range(min(limit, len(ds))))
            # straight from the Arrow buffers: ds["image"] builds 28 Python lists per image (slow)
            col = ds.with_format("arrow")["image"]
            col = col.combine_chunks() if hasattr(col, "combine_chunks") else col
            col = getattr(col, "storage", col)  # the Array2D extension wraps a list<list<uint8>> array
            flat = np.asarray(col.flatten().flatten().to_numpy(zero_copy_only=False), dtype=np.uint8)
            images = torch.from_numpy(flat.reshape(len(ds), 28, 28).copy())
            self._data_cache[key] = (images, torch.tensor(ds["label"], dtype=torch.int64))
        return self._data_cache[key]

    # ---------------------------------------------------------------------------------- base

    def _config(self) -> Any:
        from transformers import CLIPVisionConfig  # noqa: PLC0415

        c = self.cfg
        return CLIPVisionConfig(hidden_size=c.hidden_size, intermediate_size=c.mlp_ratio * c.hidden_size,
                                num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, num_channels=1,
                                image_size=28, patch_size=c.patch_size, projection_dim=c.hidden_size)

    def prepare_base(self, out_dir: Path, data_dir: Path, seed: int) -> None:
        """Pretrain a CLIPVisionModel from its config on ``data_dir/pretrain`` (Fashion-MNIST,
        10-way, throwaway linear head on the pooled [CLS] features); save it as an HF dir."""
        from transformers import CLIPVisionModel  # noqa: PLC0415

        c = self.cfg
        x, y = self._arrays(data_dir, PRETRAIN_DIR, "train")
        with seeded(task_seed(seed, "base", "init")):
            model = CLIPVisionModel(self._config()).train()
            head = nn.Linear(c.hidden_size, 10)

            def step_loss(idx: torch.Tensor) -> torch.Tensor:
                return F.cross_entropy(head(model(pixel_values=_to_pixels(x[idx])).pooler_output), y[idx])

            log = train([{"params": list(model.parameters()) + list(head.parameters()), "lr": c.pretrain_lr}], step_loss,
                        n_items=len(y), steps=c.pretrain_steps, batch_size=c.pretrain_batch_size,
                        seed=task_seed(seed, "base", "batches"), warmup_frac=0.05, weight_decay=0.05)
        log.pop("seconds")
        model.eval()
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            (tmp / "pretrain_log.json").write_text(json.dumps({"seed": seed, **log}, sort_keys=True) + "\n")

    def load_encoder(self, model_dir: Path) -> nn.Module:
        """``CLIPVisionModel`` with eager attention (double backward through SDPA is unsupported on CPU)."""
        from transformers import CLIPVisionModel  # noqa: PLC0415

        return CLIPVisionModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    # ------------------------------------------------------------------------------- experts

    @torch.inference_mode()
    def _features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Pooled features [n, d] of uint8 images [n, 28, 28] (eval mode, batched)."""
        out = [model(pixel_values=_to_pixels(images[i:i + self.cfg.eval_batch_size])).pooler_output
               for i in range(0, len(images), self.cfg.eval_batch_size)]
        return torch.cat(out)

    def zero_shot_head(self, task: str, base_dir: Path, data_dir: Path) -> torch.Tensor:
        """The frozen head of ``task``: prototypes [k, d] of the PRETRAINED encoder's normalised
        features on the train split."""
        x, y = self._arrays(data_dir, task, "train")
        return prototype_head(self._features(self._model(base_dir, fresh=True), x), y, len(TASKS[task].classes))

    def prepare_expert(self, task: str, base_dir: Path, data_dir: Path, out_dir: Path, seed: int,
                       expert_seed: int = 0) -> None:
        """Compute the frozen prototype head from the pretrained encoder, fine-tune the encoder
        under it (cross-entropy on ``logit_scale * cos``), write the encoder and ``head.safetensors``."""
        from transformers import CLIPVisionModel  # noqa: PLC0415

        c = self.cfg
        head = self.zero_shot_head(task, base_dir, data_dir)  # plain tensor: frozen by construction
        x, y = self._arrays(data_dir, task, "train")
        run = training_seed(seed, expert_seed)  # == seed for expert seed 0
        with seeded(task_seed(run, task, "expert")):
            model = CLIPVisionModel.from_pretrained(str(base_dir), attn_implementation="sdpa").train()

            def step_loss(idx: torch.Tensor) -> torch.Tensor:
                z = F.normalize(model(pixel_values=_to_pixels(x[idx])).pooler_output, dim=-1)
                return F.cross_entropy(c.logit_scale * z @ head.T, y[idx])

            log = train([{"params": list(model.parameters()), "lr": c.lr}], step_loss, n_items=len(y), steps=c.steps,
                        batch_size=c.batch_size, seed=task_seed(run, task, "batches"), warmup_frac=c.warmup_frac,
                        weight_decay=c.weight_decay)
        log.pop("seconds")
        model.eval()
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(str(tmp), safe_serialization=True)
            save_head(tmp / HEAD_FILE, head, torch.zeros(len(head)), kind="prototype", task=task,
                      classes=self.classes(task), logit_scale=c.logit_scale)
            (tmp / "train_log.json").write_text(json.dumps({"task": task, "seed": seed, "expert_seed": expert_seed, **log}, sort_keys=True) + "\n")

    # ---------------------------------------------------------------------------- evaluation

    def _model(self, base_dir: Path, fresh: bool = False) -> nn.Module:
        """The cached evaluation model for ``base_dir``; ``fresh`` reloads the stored weights."""
        from transformers import CLIPVisionModel  # noqa: PLC0415

        key = str(Path(base_dir).resolve())
        if fresh or key not in self._model_cache:
            self._model_cache[key] = CLIPVisionModel.from_pretrained(key, attn_implementation="sdpa").eval()
        return self._model_cache[key]

    def evaluate(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, expert_dir: Path,
                 *, limit: int | None = None, split: str = "test") -> list[Row]:
        """Accuracy (headline) and macro-F1 on ``split`` (test, or validation: the split
        prepare_data draws disjoint from train and test), with ``task``'s frozen head."""
        split = self.check_split(split)
        if task not in self.tasks:
            raise ValueError(f"minivision: task {task!r} not in this suite's tasks {self.tasks}")
        model = self._model(base_dir)
        # A job evaluates one merged state on every task: copy it into the model once. The pair is
        # held (not its ids, which a freed state could pass on); states are never changed in place.
        if self._loaded is None or self._loaded[0] is not model or self._loaded[1] is not encoder_state:
            self._loaded = None  # until the copy is complete
            load_encoder_state(model, encoder_state)
            self._loaded = (model, encoder_state)
        weight, bias, meta = load_head(Path(expert_dir) / HEAD_FILE)
        x, y = self._arrays(data_dir, task, split, limit)
        preds = apply_head(self._features(model, x), weight, bias, meta).argmax(-1)
        acc = float((preds == y).float().mean())
        from sklearn.metrics import f1_score  # lazy: only evaluation jobs pay for sklearn's import

        f1 = float(f1_score(y.numpy(), preds.numpy(), average="macro", labels=np.arange(len(weight)), zero_division=0))
        outcome = Outcome(preds.numpy(), y.numpy(), "accuracy")
        return [{"task": task, "metric": "accuracy", "value": acc, "outcome": outcome},
                {"task": task, "metric": "f1macro", "value": f1}]
