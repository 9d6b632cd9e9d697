"""Paper-scale CLIP suites ``vitb32``, ``vitb16``, ``vitl14``: eight vision tasks, zero-shot heads.

Encoder: the CLIP image tower in the ``CLIPVisionModelWithProjection`` layout (``vision_model.*`` +
``visual_projection.weight``), whatever the expert family:

- ``expert_source: fusionbench`` (default): base ``openai/clip-vit-*`` (a full ``CLIPModel``; its
  text tower builds the zero-shot heads) and FusionBench's ``tanganke/clip-vit-*_<task>``
  ``CLIPVisionModel`` experts. They were trained with the projection frozen, so each expert gets the
  base ``visual_projection`` (task vector exactly zero there). Merge layout default ``split``.
- ``expert_source: taskvectors``: the paper's task_vectors open_clip checkpoints under
  ``taskvectors_dir`` (``zeroshot.*``, ``<Task>/finetuned.*``, ``head_<Task>.*``), either already
  converted to safetensors or, with ``trust_pickle: true``, converted here once. The base encoder
  is ``zeroshot`` (not the HF weights) and the heads are the stored ``head_<Task>`` ones when
  present. Merge layout default ``fused`` (open_clip's ``in_proj``, which TSV-M/WUDI see as one matrix).

Evaluation: top-1 accuracy on each task's test split: image embeds = visual_projection(pooler
output), L2-normalised, times the task's head; images preprocessed by ``CLIPImageProcessor``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from fda.bench.eval.outcomes import Outcome
from fda.io.checkpoints import load_state_dict, save_state_dict, write_json_atomic
from fda.bench.openclip_convert import (
    QkvLayout,
    convert_taskvectors_head,
    find_taskvectors_head,
    find_visual_prefix,
    load_taskvectors_object,
    module_state_dict,
    openclip_visual_to_hf,
    split_qkv,
    to_layout,
)
from fda.bench.sources import (
    DatasetSpec,
    SourceError,
    atomic_dir,
    cast_like,
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
from fda.bench.suites.base import Row, StateDict, Suite, no_expert_seeds
from fda.bench.suites.vision_classnames import TEMPLATES, VISION_TASKS, resolve_classnames
from fda.bench.eval.zeroshot import cached_zeroshot_head, head_metadata, load_head, zeroshot_logits

#: suite name -> (HF base id, FusionBench model tag, task_vectors folder)
ARCHS = {
    "vitb32": ("openai/clip-vit-base-patch32", "clip-vit-base-patch32", "ViT-B-32"),
    "vitb16": ("openai/clip-vit-base-patch16", "clip-vit-base-patch16", "ViT-B-16"),
    "vitl14": ("openai/clip-vit-large-patch14", "clip-vit-large-patch14", "ViT-L-14"),
}


def _h(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class ClipVisionSettings:
    """Settings of the CLIP suites (all optional; sources may be hub ids, local paths)."""

    base: str | None = _h("full CLIPModel source (text tower builds the heads); default hf:openai/clip-vit-<arch>", default=None)
    expert_source: Literal["fusionbench", "taskvectors"] = _h("expert family: fusionbench (HF tanganke/*) or taskvectors (the paper's open_clip checkpoints)", default="fusionbench")
    experts: dict[str, str] = _h("per-task expert source overrides {task: hub id or path}", default_factory=dict)
    taskvectors_dir: str | None = _h("task_vectors model folder (e.g. .../ViT-B-32) for expert_source taskvectors", default=None)
    trust_pickle: bool = _h("allow one-time unpickling of task_vectors .pt files (runs pickle code: trusted files only)", default=False)
    base_encoder: str | None = _h("override of the base image encoder (HF dir or converted safetensors); default: the base's tower, or zeroshot for taskvectors", default=None)
    heads: Literal["auto", "zeroshot", "stored"] = _h("auto: stored task_vectors heads when present, else zero-shot from the text tower", default="auto")
    qkv_layout: Literal["auto", "fused", "split"] = _h("merge layout of attention q/k/v; auto: fused for taskvectors, split for fusionbench", default="auto")
    tasks: list[str] | None = _h("subset of tasks, in table order (default all eight)", default=None)
    datasets: dict[str, str] = _h("per-task dataset overrides {task: hub id or save_to_disk dir}", default_factory=dict)
    dataset_configs: dict[str, Any] = _h("per-task dataset config overrides {task: name or null}", default_factory=dict)
    splits: dict[str, str] = _h("per-task evaluation split overrides (default test)", default_factory=dict)
    classnames: dict[str, list[str]] = _h("per-task class names overriding the dataset's ClassLabel names", default_factory=dict)
    templates: dict[str, list[str]] = _h("per-task prompt templates overriding the built-in ones ('{}' = class name)", default_factory=dict)
    copy_data: bool = _h("prepare_data copies the eval splits with save_to_disk (else writes a source.json marker and reads the HF cache)", default=False)
    batch_size: int = _h("evaluation batch size", default=128)
    num_workers: int = _h("DataLoader workers for image preprocessing", default=0)
    device: str = _h("auto (cuda if available), cpu, cuda, cuda:1, ...", default="auto")
    limit: int | None = _h("evaluate only the first N examples per task (quick looks)", default=None)
    head_cache: str | None = _h("zero-shot head cache directory (default ~/.cache/fda-bench/heads; '' disables)", default=None)
    sha256: dict[str, Any] = _h("expected sha256 per source {base|task: hash or {file: hash}}", default_factory=dict)
    check_dtype: bool = _h("require expert dtypes to equal the base's (false: cast experts to the base dtype)", default=True)
    dtype: str = _h("precision the base is loaded and stored in: float32 (paper), bfloat16, float16 or auto (the checkpoint's)", default="float32")
    progress: bool = _h("tqdm progress bars", default=True)

    @classmethod
    def smoke(cls, **overrides: Any) -> ClipVisionSettings:
        """A quick-look variant: two tasks, 64 examples each."""
        base = {"tasks": ["mnist", "eurosat"], "limit": 64}
        return parse_settings(cls, {**base, **overrides}, suite="clip")


class ClipVisionSuite(Suite):
    """Shared implementation of ``vitb32`` / ``vitb16`` / ``vitl14`` (subclasses fix the arch)."""

    family = "clip-vision"
    no_validation = ("its tasks are scored on their test splits and no held-out slice of their train splits is "
                     "carved out yet (docs/selection.md)")
    arch: str = "vitb32"

    def __init__(self, settings: dict[str, Any] | ClipVisionSettings | None = None):
        self.cfg: ClipVisionSettings = parse_settings(ClipVisionSettings, settings, suite=self.name)
        super().__init__(dataclasses.asdict(self.cfg))  # the validated section, defaults filled in
        unknown = [t for t in (self.cfg.tasks or []) if t not in VISION_TASKS]
        for key in ("experts", "datasets", "dataset_configs", "splits", "classnames", "templates"):
            unknown += [t for t in getattr(self.cfg, key) if t not in VISION_TASKS]
        if unknown:
            raise ValueError(f"suite '{self.name}': unknown task(s) {sorted(set(unknown))}; valid tasks: {list(VISION_TASKS)}")
        if self.cfg.expert_source == "taskvectors" and not self.cfg.taskvectors_dir and len(self.cfg.experts) < len(self.tasks):
            raise ValueError(f"suite '{self.name}': expert_source taskvectors needs `taskvectors_dir` (the folder holding "
                             f"zeroshot.pt and <Task>/finetuned.pt) or an `experts` entry for every task")
        if self.cfg.heads == "stored" and not self.cfg.taskvectors_dir:
            raise ValueError(f"suite '{self.name}': heads: stored reads head_<Task> files from `taskvectors_dir`; set it")

    # ------------------------------------------------------------------ names and provenance
    @property
    def tasks(self) -> list[str]:
        return list(self.cfg.tasks or VISION_TASKS)

    @property
    def display_names(self) -> dict[str, str]:
        return {t: VISION_TASKS[t].display for t in self.tasks}

    @property
    def base_source(self) -> str:
        return self.cfg.base or f"hf:{ARCHS[self.arch][0]}"

    @property
    def qkv_layout(self) -> QkvLayout:
        if self.cfg.qkv_layout != "auto":
            return self.cfg.qkv_layout  # type: ignore[return-value]
        return "fused" if self.cfg.expert_source == "taskvectors" else "split"

    def to_merge_layout(self, state: StateDict) -> StateDict:
        """Encoder state in the layout merges run in (``qkv_layout``)."""
        return to_layout(state, self.qkv_layout)

    def from_merge_layout(self, state: StateDict) -> StateDict:
        """Back to the canonical (split, HF-loadable) layout."""
        return split_qkv(state)

    def provenance(self) -> dict[str, str]:
        return {"expert_source": self.cfg.expert_source, "qkv_layout": self.qkv_layout, "base_source": self.base_source}

    def expert_spec(self, task: str) -> str:
        if task in self.cfg.experts:
            return self.cfg.experts[task]
        info = VISION_TASKS[task]
        if self.cfg.expert_source == "fusionbench":
            return f"hf:tanganke/{ARCHS[self.arch][1]}_{info.fusionbench}"
        return str(self._tv_file(info.taskvectors, "finetuned"))

    def dataset_spec(self, task: str) -> DatasetSpec:
        info = VISION_TASKS[task]
        if task in self.cfg.dataset_configs:
            config = self.cfg.dataset_configs[task]
        else:  # the built-in config belongs to the built-in dataset id only
            config = None if task in self.cfg.datasets else info.config
        return DatasetSpec(self.cfg.datasets.get(task, info.dataset), config, self.cfg.splits.get(task, info.split))

    def _tv_file(self, stem_dir: str | None, stem: str) -> Path:
        """``taskvectors_dir/[stem_dir/]stem.safetensors`` if converted, else the ``.pt``."""
        root = Path(self.cfg.taskvectors_dir or ".")
        base = root / stem_dir / stem if stem_dir else root / stem
        st = base.with_suffix(".safetensors")
        return st if st.is_file() else base.with_suffix(".pt")

    # ------------------------------------------------------------------ data
    def prepare_data(self, out_dir: Path, seed: int) -> None:
        """Resolve each task's evaluation split (fails fast offline when not cached) and record it:
        a ``source.json`` marker per task (default) or a ``save_to_disk`` copy (``copy_data``).
        The test splits are fixed, so ``seed`` is not used."""
        for task in self.tasks:
            prepare_task_data(Path(out_dir) / task, {"eval": self.dataset_spec(task)}, copy=self.cfg.copy_data)

    def _eval_split(self, data_dir: Path | None, task: str):
        return open_task_split(Path(data_dir) / task if data_dir else None, "eval", self.dataset_spec(task))

    # ------------------------------------------------------------------ base
    def prepare_base(self, out_dir: Path, data_dir: Path, seed: int) -> None:
        """Write the base image encoder (HF ``CLIPVisionModelWithProjection`` dir + image processor)
        and, for tasks that use them, zero-shot heads under ``heads/{task}.safetensors``."""
        from transformers import CLIPModel, CLIPVisionModelWithProjection  # noqa: PLC0415

        clip_dir = resolve_model_dir(self.base_source)
        self._check_sha(clip_dir, "base")
        clip = CLIPModel.from_pretrained(str(clip_dir), dtype=torch_dtype(self.cfg.dtype))
        vcfg = self._vision_config(clip.config)
        tower = {k: v for k, v in clip.state_dict().items() if k.startswith("vision_model.") or k.startswith("visual_projection.")}
        encoder, enc_src = tower, self.base_source
        if self.cfg.base_encoder or self.cfg.expert_source == "taskvectors":
            enc_src = self.cfg.base_encoder or str(self._tv_file(None, "zeroshot"))
            encoder = self._load_tower(enc_src, "zeroshot", out_dir)
            verify_specs(tensor_specs(encoder), tensor_specs(tower), where=enc_src, check_dtype=False)
            encoder = cast_like(encoder, tower)
        with atomic_dir(out_dir) as tmp:
            model = CLIPVisionModelWithProjection(vcfg)
            model.load_state_dict(encoder, strict=True)
            model.save_pretrained(str(tmp))
            self._image_processor(clip_dir, vcfg).save_pretrained(str(tmp))
            heads_info = {}
            for task in self.tasks:
                if self._head_mode(task) == "zeroshot":
                    heads_info[task] = self._write_zeroshot_head(task, clip, clip_dir, data_dir, tmp / "heads" / f"{task}.safetensors")
            write_json_atomic({**self.provenance(), "encoder_source": enc_src, "heads": heads_info, "seed": seed}, tmp / "provenance.json")

    @staticmethod
    def _vision_config(clip_config):
        vcfg = clip_config.vision_config
        # transformers v5: the tower's projection_dim must be set on the vision config itself.
        vcfg.projection_dim = clip_config.projection_dim
        vcfg.architectures = ["CLIPVisionModelWithProjection"]
        return vcfg

    @staticmethod
    def _image_processor(clip_dir: Path, vcfg):
        cls = _processor_class()
        if (Path(clip_dir) / "preprocessor_config.json").is_file():
            return cls.from_pretrained(str(clip_dir))
        size = vcfg.image_size  # OpenAI CLIP preprocessing: resize shortest edge (bicubic), centre crop
        return cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    def _head_mode(self, task: str) -> str:
        if self.cfg.heads != "auto":
            return self.cfg.heads
        if self.cfg.expert_source == "taskvectors" and self._stored_head(task) is not None:
            return "stored"
        return "zeroshot"

    def _stored_head(self, task: str) -> Path | None:
        if not self.cfg.taskvectors_dir:
            return None
        return find_taskvectors_head(self.cfg.taskvectors_dir, VISION_TASKS[task].taskvectors)

    def _write_zeroshot_head(self, task: str, clip, clip_dir: Path, data_dir: Path, out: Path) -> dict[str, Any]:
        from transformers import AutoTokenizer  # noqa: PLC0415

        ds = self._eval_split(data_dir, task)
        label_col = _label_column(ds, task)
        classnames, origin = resolve_classnames(task, ds.features, label_col, self.cfg.classnames.get(task))
        templates = self.cfg.templates.get(task) or TEMPLATES[task]
        cache = self._head_cache_dir()
        head, _ = cached_zeroshot_head(
            cache, self.base_source, task, lambda: clip, lambda: AutoTokenizer.from_pretrained(str(clip_dir)),
            classnames, templates, device=resolve_device(self.cfg.device), progress=self.cfg.progress,
        )
        save_state_dict({"weight": head}, out, metadata={**head_metadata(self.base_source, task, templates, classnames), "classnames_from": origin})
        return {"kind": "zeroshot", "classes": len(classnames), "classnames_from": origin}

    def _head_cache_dir(self) -> Path | None:
        if self.cfg.head_cache == "":
            return None
        return Path(self.cfg.head_cache).expanduser() if self.cfg.head_cache else Path("~/.cache/fda-bench/heads").expanduser()

    # ------------------------------------------------------------------ experts
    def prepare_expert(self, task: str, base_dir: Path, data_dir: Path, out_dir: Path, seed: int,
                       expert_seed: int = 0) -> None:
        """Fetch (hub/local) or convert the expert image tower, verify it against the base, write it
        as an HF dir at ``out_dir`` with the task's ``head.safetensors``. No fine-tuning recipe here:
        both checkpoint families are published, so only expert seed 0 exists."""
        self._check_task(task)
        no_expert_seeds(self.name, expert_seed, "its experts are published checkpoints (no vision fine-tuning recipe)")
        spec = self.expert_spec(task)
        if parse_source(spec).kind == "recipe":
            raise SourceError(f"suite '{self.name}': no vision fine-tuning recipe; use expert_source fusionbench or taskvectors for task '{task}'")
        base_dir = Path(base_dir)
        base_state = load_state_dict(base_dir)
        state = self._load_tower(spec, task, out_dir)
        if "visual_projection.weight" not in state and self.cfg.expert_source == "fusionbench":
            state["visual_projection.weight"] = base_state["visual_projection.weight"]  # trained frozen: zero task vector
        verify_specs(tensor_specs(state), tensor_specs(base_state), where=spec, check_dtype=self.cfg.check_dtype)
        state = cast_like(state, base_state)  # a no-op unless check_dtype is off
        with atomic_dir(out_dir) as tmp:
            save_state_dict(state, tmp / "model.safetensors", metadata={"format": "pt", "source": spec})
            for name in ("config.json", "preprocessor_config.json"):
                if (base_dir / name).is_file():
                    shutil.copy2(base_dir / name, tmp / name)
            head_info = self._write_expert_head(task, base_dir, tmp / "head.safetensors")
            write_json_atomic({**self.provenance(), "task": task, "source": spec, "head": head_info, "seed": seed}, tmp / "provenance.json")

    def _load_tower(self, spec: str, label: str, out_dir: Path) -> StateDict:
        """Image tower state in canonical HF keys from a hub id, HF dir, safetensors or task_vectors file."""
        path = resolve_model_dir(spec)
        self._check_sha(path, label)
        if path.is_file() and path.suffix in (".pt", ".pth", ".bin"):
            # task_vectors file: a plain state dict, or a pickled module (needs trust_pickle); the
            # converted tower is what prepare_* writes, so no intermediate file is kept
            state = module_state_dict(load_taskvectors_object(path, trust_pickle=self.cfg.trust_pickle), path)
        else:
            state = load_state_dict(path)
        if any(k.endswith("conv1.weight") for k in state):
            state = openclip_visual_to_hf(state, prefix=find_visual_prefix(state))
        if any(k.startswith("text_model.") for k in state):  # a full CLIPModel: keep the image tower
            state = {k: v for k, v in state.items() if k.startswith(("vision_model.", "visual_projection."))}
        if any(k.startswith(_V5_VISION_TOP) for k in state):
            # transformers v5 saves CLIPVisionModel without the `vision_model.` prefix that v4 files
            # (FusionBench's hub experts) and CLIPVisionModelWithProjection use: add it.
            state = {("vision_model." + k if k.startswith(_V5_VISION_TOP) else k): v for k, v in state.items()}
        state.pop("vision_model.embeddings.position_ids", None)  # non-persistent buffer in older exports
        return split_qkv(state)

    def _write_expert_head(self, task: str, base_dir: Path, out: Path) -> dict[str, Any]:
        if self._head_mode(task) == "stored":
            src = self._stored_head(task)
            if src is None:
                raise SourceError(f"suite '{self.name}': heads: stored, but no head_{VISION_TASKS[task].taskvectors}"
                                  f"[Val|ValfromTrain].(safetensors|pt) in {self.cfg.taskvectors_dir} or its parent")
            if src.suffix == ".pt":
                convert_taskvectors_head(src, out, trust_pickle=self.cfg.trust_pickle)
            else:
                shutil.copy2(src, out)
            weight, _, _ = load_head(out)
            proj = json.loads((base_dir / "config.json").read_text()).get("projection_dim")
            if proj and weight.shape[1] != proj:
                raise SourceError(f"{src}: head width {weight.shape[1]} != the encoder's projection_dim {proj}")
            return {"kind": "stored", "source": str(src), "classes": int(weight.shape[0])}
        src = base_dir / "heads" / f"{task}.safetensors"
        if not src.is_file():
            raise SourceError(f"{src}: zero-shot head missing; re-run prepare_base for suite '{self.name}'")
        shutil.copy2(src, out)
        return {"kind": "zeroshot", "source": str(src)}

    def _check_sha(self, path: Path, label: str) -> None:
        verify_source_sha256(path, self.cfg.sha256.get(label))

    def _check_task(self, task: str) -> None:
        if task not in self.tasks:
            raise ValueError(f"suite '{self.name}': unknown task '{task}'; tasks: {self.tasks}")

    # ------------------------------------------------------------------ model and evaluation
    def load_encoder(self, model_dir: Path) -> nn.Module:
        """``CLIPVisionModelWithProjection`` with eager attention (FDA needs double backward)."""
        from transformers import CLIPVisionModelWithProjection  # noqa: PLC0415

        return CLIPVisionModelWithProjection.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    def evaluate(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, expert_dir: Path,
                 *, limit: int | None = None, split: str = "test") -> list[Row]:
        """Top-1 accuracy (headline) and mean cross-entropy of ``encoder_state`` (either q/k/v
        layout) with ``expert_dir/head.safetensors`` on the task's test split (``split``: test only,
        see ``no_validation``)."""
        self.check_split(split)
        preds, labels, loss = self._run(encoder_state, task, base_dir, data_dir, expert_dir, limit=limit)
        acc = float((preds == labels).float().mean())
        outcome = Outcome(preds.numpy(), labels.numpy(), "accuracy")
        return [{"task": task, "metric": "accuracy", "value": acc, "outcome": outcome},
                {"task": task, "metric": "loss", "value": loss / len(labels)}]

    def predict(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, head_dir: Path,
                *, limit: int | None = None) -> tuple[list[int], list[int]]:
        """Predicted and true class ids on ``task``'s split with the head in ``head_dir``."""
        preds, labels, _ = self._run(encoder_state, task, base_dir, data_dir, head_dir, limit=limit)
        return preds.tolist(), labels.tolist()

    def _run(self, encoder_state: StateDict, task: str, base_dir: Path, data_dir: Path, head_dir: Path,
             *, limit: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection  # noqa: PLC0415

        self._check_task(task)
        device = resolve_device(self.cfg.device)
        model = CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(str(base_dir)))
        _load_strict(model, split_qkv(encoder_state), where=f"{self.name}/{task} encoder state")
        model = model.to(device).eval()
        weight, bias, _ = load_head(Path(head_dir) / "head.safetensors")
        processor = _processor_class().from_pretrained(str(base_dir))
        ds = self._eval_split(data_dir, task)
        limit = limit if limit is not None else self.cfg.limit
        if limit is not None:
            ds = ds.select(range(min(limit, len(ds))))
        if len(ds) == 0:
            raise ValueError(f"task '{task}': the evaluation split is empty")
        img_col, label_col = _image_column(ds, task), _label_column(ds, task)
        if weight.shape[0] <= max(ds[label_col]):
            raise ValueError(f"{head_dir}/head.safetensors has {weight.shape[0]} classes but task '{task}' has labels up to {max(ds[label_col])}")
        loader = torch.utils.data.DataLoader(
            ds, batch_size=self.cfg.batch_size, num_workers=self.cfg.num_workers, shuffle=False,
            collate_fn=functools.partial(_collate, processor=processor, img_col=img_col, label_col=label_col),
        )
        preds, labels, loss = [], [], 0.0
        with torch.inference_mode():
            for pixels, y in tqdm(loader, desc=f"{self.name}/{task}", disable=not self.cfg.progress, leave=False):
                embeds = model(pixel_values=pixels.to(device)).image_embeds
                logits = zeroshot_logits(embeds, weight.to(device), None if bias is None else bias.to(device))
                loss += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
                preds.append(logits.argmax(dim=-1).cpu())
                labels.append(y)
        return torch.cat(preds), torch.cat(labels), loss


def _processor_class():
    """The PIL backend of CLIPImageProcessor: the same numbers with or without torchvision (the
    torchvision backend resizes differently), and PIL resizing is what open_clip's transforms use."""
    try:
        from transformers import CLIPImageProcessorPil  # noqa: PLC0415

        return CLIPImageProcessorPil
    except ImportError:  # older transformers: the class is PIL-based already
        from transformers import CLIPImageProcessor  # noqa: PLC0415

        return CLIPImageProcessor


_V5_VISION_TOP = ("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")


def _load_strict(model: nn.Module, state: StateDict, *, where: str) -> None:
    own = model.state_dict()
    buffers = {n for n, _ in model.named_buffers()}
    missing = sorted(k for k in own if k not in state and k not in buffers)
    extra = sorted(k for k in state if k not in own)
    if missing or extra:
        raise ValueError(f"{where}: keys do not match the base encoder: missing {missing[:5]}, unexpected {extra[:5]}")
    for k, v in state.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ValueError(f"{where}: tensor '{k}' has shape {tuple(v.shape)}, the base encoder has {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)


def _image_column(ds, task: str) -> str:
    from datasets import Image  # noqa: PLC0415

    cols = [k for k, f in ds.features.items() if isinstance(f, Image)] or [k for k in ("image", "img") if k in ds.features]
    if not cols:
        raise ValueError(f"task '{task}': no image column in features {list(ds.features)}")
    return cols[0]


def _label_column(ds, task: str) -> str:
    from datasets import ClassLabel  # noqa: PLC0415

    cols = [k for k, f in ds.features.items() if isinstance(f, ClassLabel)] or [k for k in ("label", "labels") if k in ds.features]
    if not cols:
        raise ValueError(f"task '{task}': no label column in features {list(ds.features)}")
    return cols[0]


def _collate(rows: list[dict], processor, img_col: str, label_col: str) -> tuple[torch.Tensor, torch.Tensor]:
    images = [r[img_col].convert("RGB") for r in rows]  # MNIST/SVHN grey or palette images → RGB
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels, torch.tensor([int(r[label_col]) for r in rows])


class VitB32Suite(ClipVisionSuite):
    name = "vitb32"
    arch = "vitb32"


class VitB16Suite(ClipVisionSuite):
    name = "vitb16"
    arch = "vitb16"


class VitL14Suite(ClipVisionSuite):
    name = "vitl14"
    arch = "vitl14"
