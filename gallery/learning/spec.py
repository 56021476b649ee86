"""What a kind of model takes: the kinds, their training options and defaults, in one table.

Everything else derives from it: `ModelVersion.Kind`, the training form's kind choices and
option fields, `train_model`'s option flags, the service's validation and the trainer.
Importable without torch (the web process and the command line read it).

A model's `TrainingSpec` (a JSON object, stored in `ModelVersion.spec` and in its model.pt)
is all a network needs to be rebuilt: the kind, the options, and the classes it saw."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Required, TypedDict, cast

from django.db import models


class Kind(models.TextChoices):
    """The kinds of model and their labels (`ModelVersion.Kind`); what each takes: `KINDS`."""

    PRETRAINED = "pretrained", "Pretrained backbone"
    AUTOENCODER = "autoencoder", "Convolutional autoencoder"
    METRIC = "metric", "Metric learning (softmax over pairs)"
    TRIPLET = "triplet", "Metric learning (triplet loss)"
    CONTRASTIVE = "contrastive", "Self-supervised contrastive"


@dataclass(frozen=True)
class KindRules:
    trained: bool  # trained here (else a pretrained backbone, ready at once)
    bits: bool = False  # can learn a hash code of `bits` bits
    labels: bool = False  # needs images of at least two categories
    defaults: Mapping[str, Any] = field(default_factory=dict)  # the options unless given (over COMMON)


@dataclass(frozen=True)
class Option:
    """A training option: a `TrainingSpec` key, a `--flag` of `train_model`, maybe a form field."""

    name: str
    type: type[int] | type[float] | type[str]
    help: str = ""
    choices: tuple[str, ...] = ()
    in_form: bool = False  # the admin's training form offers it
    on_command_line: bool = True  # `train_model` offers it
    label: str = ""  # the form's label, when not the name's
    min_value: int | None = None  # the form's bounds
    max_value: int | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


ARCHES = ("lite0", "small_cnn")  # networks.build_backbone

OPTIONS = (
    Option("dim", int, label="Dimension", in_form=True, min_value=2),
    Option("image_size", int, "input size in pixels.", in_form=True, min_value=16, max_value=1024),
    Option("frozen_stages", int),
    Option("arch", str, choices=ARCHES),
    Option("batch_size", int),
    Option("lr", float),
    Option("noise", float, "Autoencoder: denoising, Gaussian noise of this std."),
    Option("margin", float),
    Option("temperature", float),
    Option("views", int, "Augmented views prepared per image."),
    Option("width", int),
    Option("max_images", int, "Train on a random sample of this many images."),
    Option("proxy_weight", float, on_command_line=False),
    Option("tail_lr_scale", float, on_command_line=False),
    Option("weight_decay", float, on_command_line=False),
)

BITS_RANGE = (8, 256)

COMMON = {"batch_size": 128, "lr": 5e-4, "weight_decay": 1e-4, "views": 1}

KINDS: dict[Kind, KindRules] = {
    Kind.PRETRAINED: KindRules(trained=False),
    Kind.AUTOENCODER: KindRules(
        trained=True, defaults={"image_size": 32, "dim": 32, "width": 64, "noise": 0.0}
    ),
    Kind.METRIC: KindRules(
        trained=True,
        bits=True,
        labels=True,
        defaults={
            "arch": "lite0",
            "frozen_stages": 5,
            "image_size": 128,
            "dim": 128,
            "temperature": 0.2,
            "proxy_weight": 1.0,
            # The pretrained stages learn at the head's rate. 8-minute runs on CIFAR-10 (mAP@1000):
            # 0.845 with lr 1e-3 and a third of it for those stages, 0.873 with all at 1e-3, 0.878
            # with all at 2e-3.
            "lr": 2e-3,
            "tail_lr_scale": 1.0,
        },
    ),
    Kind.TRIPLET: KindRules(
        trained=True,
        bits=True,
        labels=True,
        defaults={
            "arch": "lite0",
            "frozen_stages": 5,
            "image_size": 128,
            "dim": 128,
            "margin": 0.2,
            "proxy_weight": 0.0,
            "lr": 1e-3,
            "tail_lr_scale": 0.3,
        },
    ),
    Kind.CONTRASTIVE: KindRules(
        trained=True,
        bits=True,
        defaults={
            "views": 2,  # two augmented views of each image to tell apart (SimCLR)
            "arch": "lite0",
            "frozen_stages": 5,
            "image_size": 128,
            "dim": 128,
            "temperature": 0.2,
            "lr": 1e-3,
            "tail_lr_scale": 0.3,
        },
    ),
}

TRAINED_KINDS = tuple(kind.value for kind, rules in KINDS.items() if rules.trained)
BITS_KINDS = tuple(kind.value for kind, rules in KINDS.items() if rules.bits)
LABELLED_KINDS = tuple(kind.value for kind, rules in KINDS.items() if rules.labels)


class TrainingSpec(TypedDict, total=False):
    """What a trained network is rebuilt from: a plain JSON object (`make_spec` + the trainer's
    `classes`). Specs saved before a key existed lack it: read such keys with `.get()`."""

    kind: Required[str]
    batch_size: int
    lr: float
    weight_decay: float
    views: int
    arch: str
    frozen_stages: int
    image_size: int
    dim: int
    width: int
    noise: float
    margin: float
    temperature: float
    proxy_weight: float
    tail_lr_scale: float
    max_images: int
    bits: int
    classes: list[str]  # the categories of the training images (set by the trainer)


def check_bits(kind: str, bits: int) -> None:
    """A hash code has 8 to 256 bits, and only some kinds learn one."""
    low, high = BITS_RANGE
    if bits and not low <= bits <= high:
        raise ValueError(f"bits must be between {low} and {high}")
    if bits and kind in TRAINED_KINDS:
        _check_kind_learns_bits(kind)


def _check_kind_learns_bits(kind: str) -> None:
    if kind not in BITS_KINDS:
        *first, last = BITS_KINDS
        raise ValueError(f"Hash codes are learned by the {', '.join(first)} and {last} kinds")


def make_spec(kind: str, **overrides: Any) -> TrainingSpec:
    """The kind's defaults (over COMMON), then the `overrides` that are not None."""
    if kind not in TRAINED_KINDS:
        raise ValueError(f"Unknown kind {kind!r}: one of {', '.join(TRAINED_KINDS)}")
    spec: dict[str, Any] = {"kind": kind, **COMMON, **KINDS[Kind(kind)].defaults}
    spec.update({k: v for k, v in overrides.items() if v is not None})
    if spec.get("bits"):
        _check_kind_learns_bits(kind)
    return cast(TrainingSpec, spec)
