"""The eight vision tasks of the paper suites: hub datasets, prompt templates, class names.

Class names come from the dataset's ``ClassLabel`` feature when it carries names (cleaned: ``_`` →
space, SUN397-style ``/a/abbey`` paths → ``abbey``, raw EuroSAT folder names → descriptive names);
otherwise from the fallback lists below; otherwise the suite asks for them in its settings.

The templates are the prompt ensembles of the CLIP zero-shot protocol (one to eighteen per task)
that task_vectors and FusionBench also use, written out here per task.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class VisionTask:
    """One task: hub dataset, its config and eval split, expert names in the two checkpoint families."""

    name: str                 # suite task name (no underscores)
    display: str              # name in the paper's tables
    dataset: str              # hub dataset id (FusionBench's choice)
    config: str | None        # dataset config
    split: str                # evaluation split
    fusionbench: str          # task part of tanganke/clip-vit-*_<task>
    taskvectors: str          # task_vectors folder / head name


VISION_TASKS: dict[str, VisionTask] = {t.name: t for t in [
    VisionTask("sun397", "SUN397", "tanganke/sun397", None, "test", "sun397", "SUN397"),
    VisionTask("cars", "Cars", "tanganke/stanford_cars", None, "test", "stanford-cars", "Cars"),
    VisionTask("resisc45", "RESISC45", "tanganke/resisc45", None, "test", "resisc45", "RESISC45"),
    VisionTask("eurosat", "EuroSAT", "tanganke/eurosat", None, "test", "eurosat", "EuroSAT"),
    VisionTask("svhn", "SVHN", "ufldl-stanford/svhn", "cropped_digits", "test", "svhn", "SVHN"),
    VisionTask("gtsrb", "GTSRB", "tanganke/gtsrb", None, "test", "gtsrb", "GTSRB"),
    VisionTask("mnist", "MNIST", "ylecun/mnist", None, "test", "mnist", "MNIST"),
    VisionTask("dtd", "DTD", "tanganke/dtd", None, "test", "dtd", "DTD"),
]}

_NUMBER = ['a photo of the number: "{}".']
_SATELLITE = ["a centered satellite photo of {}.", "a centered satellite photo of a {}.", "a centered satellite photo of the {}."]
_AERIAL = [f"{kind} {what} of {art}{{}}." for art in ("", "a ", "the ")
           for what in ("imagery", "photo", "view") for kind in ("satellite", "aerial")]
_SIGN = ['a zoomed in photo of a "{}" traffic sign.', 'a centered photo of a "{}" traffic sign.', 'a close up photo of a "{}" traffic sign.']
_TEXTURE = [f"a photo of {art} {{}} {what}." for art in ("a", "the") for what in ("texture", "pattern", "thing", "object")]
_SCENE = ["a photo of a {}.", "a photo of the {}."]
_CAR = ["a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "i love my {}!", "a photo of my dirty {}.",
        "a photo of my clean {}.", "a photo of my new {}.", "a photo of my old {}."]

TEMPLATES: dict[str, list[str]] = {
    "sun397": _SCENE, "cars": _CAR, "resisc45": _AERIAL, "eurosat": _SATELLITE,
    "svhn": _NUMBER, "gtsrb": _SIGN, "mnist": _NUMBER, "dtd": _TEXTURE,
}

_DIGITS = [str(i) for i in range(10)]

# Raw EuroSAT folder names → the descriptive names CLIP prompts use.
EUROSAT_NAMES = {
    "annualcrop": "annual crop land", "forest": "forest", "herbaceousvegetation": "brushland or shrubland",
    "highway": "highway or road", "industrial": "industrial buildings or commercial buildings",
    "pasture": "pasture land", "permanentcrop": "permanent crop land",
    "residential": "residential buildings or homes or apartments", "river": "river", "sealake": "lake or sea",
}

FALLBACK_CLASSNAMES: dict[str, list[str]] = {
    "mnist": _DIGITS,
    "svhn": _DIGITS,
    "eurosat": list(EUROSAT_NAMES.values()),
    "gtsrb": [
        *(f"red and white circle {v} kph speed limit" for v in (20, 30, 50, 60, 70, 80)),
        "end / de-restriction of 80 kph speed limit",
        "red and white circle 100 kph speed limit", "red and white circle 120 kph speed limit",
        "red and white circle red car and black car no passing", "red and white circle red truck and black car no passing",
        "red and white triangle road intersection warning", "white and yellow diamond priority road",
        "red and white upside down triangle yield right-of-way", "stop", "empty red and white circle",
        "red and white circle no truck entry", "red circle with white horizonal stripe no entry",
        "red and white triangle with exclamation mark warning",
        "red and white triangle with black left curve approaching warning",
        "red and white triangle with black right curve approaching warning",
        "red and white triangle with black double curve approaching warning",
        "red and white triangle rough / bumpy road warning", "red and white triangle car skidding / slipping warning",
        "red and white triangle with merging / narrow lanes warning",
        "red and white triangle with person digging / construction / road work warning",
        "red and white triangle with traffic light approaching warning", "red and white triangle with person walking warning",
        "red and white triangle with child and person walking warning", "red and white triangle with bicyle warning",
        "red and white triangle with snowflake / ice warning", "red and white triangle with deer warning",
        "white circle with gray strike bar no speed limit", "blue circle with white right turn arrow mandatory",
        "blue circle with white left turn arrow mandatory", "blue circle with white forward arrow mandatory",
        "blue circle with white forward or right turn arrow mandatory",
        "blue circle with white forward or left turn arrow mandatory", "blue circle with white keep right arrow mandatory",
        "blue circle with white keep left arrow mandatory", "blue circle with white arrows indicating a traffic circle",
        "white circle with gray strike bar indicating no passing for cars has ended",
        "white circle with gray strike bar indicating no passing for trucks has ended",
    ],
    "dtd": ("banded blotchy braided bubbly bumpy chequered cobwebbed cracked crosshatched crystalline dotted fibrous "
            "flecked freckled frilly gauzy grid grooved honeycombed interlaced knitted lacelike lined marbled matted "
            "meshed paisley perforated pitted pleated polka-dotted porous potholed scaly smeared spiralled sprinkled "
            "stained stratified striped studded swirly veined waffled woven wrinkled zigzagged").split(),
    "resisc45": [
        "airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral", "church",
        "circular farmland", "cloud", "commercial area", "dense residential", "desert", "forest", "freeway",
        "golf course", "ground track field", "harbor", "industrial area", "intersection", "island", "lake", "meadow",
        "medium residential", "mobile home park", "mountain", "overpass", "palace", "parking lot", "railway",
        "railway station", "rectangular farmland", "river", "roundabout", "runway", "sea ice", "ship", "snowberg",
        "sparse residential", "stadium", "storage tank", "tennis court", "terrace", "thermal power station", "wetland",
    ],
}


def clean_classname(task: str, raw: str) -> str:
    """A dataset label name as a prompt word: ``/a/abbey`` → ``abbey``, ``_`` → space, EuroSAT
    folder names → descriptive names."""
    name = str(raw).strip()
    name = re.sub(r"^/?[a-z]/", "", name)           # SUN397 paths: /a/abbey, /b/bar/indoor
    name = name.replace("/", " ").replace("_", " ")
    name = re.sub(r"\s+", " ", name).strip()
    if task == "eurosat":
        name = EUROSAT_NAMES.get(name.replace(" ", "").lower(), name)
    return name


def classnames_from_features(task: str, features, label_column: str) -> list[str] | None:
    """Cleaned ``ClassLabel`` names of ``features[label_column]``, or None when it has none."""
    feat = features.get(label_column) if hasattr(features, "get") else None
    names = getattr(feat, "names", None)
    if not names:
        return None
    return [clean_classname(task, n) for n in names]


def resolve_classnames(task: str, features, label_column: str, override: Sequence[str] | None = None) -> tuple[list[str], str]:
    """Class names for ``task`` and where they came from (``settings``/``dataset``/``fallback``).

    Raises ``ValueError`` with the fix when none is available."""
    if override:
        return [str(n) for n in override], "settings"
    names = classnames_from_features(task, features, label_column)
    if names and task not in ("mnist", "svhn") and all(n.isdigit() for n in names):
        # label ids stored as names ("0", "1", ...) are useless prompts outside the digit tasks
        fallback = FALLBACK_CLASSNAMES.get(task)
        if fallback is not None and len(fallback) == len(names):
            return list(fallback), "fallback"
        raise ValueError(f"task '{task}': the dataset's class names are bare ids ({names[:3]}...); "
                         f"set `classnames: {{{task}: [...]}}` in the suite settings")
    if names:
        return names, "dataset"
    if task in FALLBACK_CLASSNAMES:
        return list(FALLBACK_CLASSNAMES[task]), "fallback"
    raise ValueError(
        f"task '{task}': the dataset's label column '{label_column}' carries no class names and there is no "
        f"fallback list; set `classnames: {{{task}: [...]}}` in the suite settings"
    )
