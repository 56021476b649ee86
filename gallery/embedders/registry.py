"""What the rest of the app needs to know about models without loading them: their names,
vector sizes and index folders, and which one is active. Importable without torch: the index
writer and the beat need only this, and should not carry a copy of PyTorch in memory.

The active model is the `ModelVersion` marked active, else the configured default
(`EMBEDDER`). `active_model()` reads it at most once a second per process (at once with
`fresh=True`)."""

import time
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from ..models import ModelVersion

# torchvision backbone -> (builder name, feature dimension)
TORCHVISION_BACKBONES = {
    "resnet18": ("resnet18", 512),
    "resnet50": ("resnet50", 2048),
    "vgg16": ("vgg16", 512),
    "mobilenet_v3_large": ("mobilenet_v3_large", 960),
    "efficientnet_b0": ("efficientnet_b0", 1280),
}

LITE0_MID_STAGE = 5
LITE0_FINAL_DIM = 1280
LITE0_DIM = LITE0_FINAL_DIM + 192  # last feature map + stage-5 output

ACTIVE_TTL_SECONDS = 1.0


def lite0_model_name(image_size: int, gallery_views: int) -> str:
    return f"efficientnet_lite0-ms{LITE0_MID_STAGE}-{gallery_views}view-{image_size}"


@dataclass(frozen=True)
class ModelRef:
    """What the rest of the app needs to know about a model, without loading it."""

    name: str  # Embedding.model_name of its vectors
    dim: int
    backbone: str  # efficientnet_lite0 | a torchvision backbone | learned
    pooling: str = "avg"
    weights: str = ""  # model file of a learned model
    bits: int = 0
    version_id: int | None = None
    views: int = 1  # vectors per item, each of `dim` numbers (an item's details: several)

    @property
    def vector_size(self) -> int:
        """Numbers in one item's stored vector (`Embedding.dim`): all its views."""
        return self.dim * self.views

    @property
    def index_dir(self) -> Path:
        """The default model keeps the original place; every other model its own folder, so
        a new index is built beside the one in use."""
        if self.name == default_model().name:
            return Path(settings.INDEX_DIR)
        return Path(settings.INDEX_DIR) / "models" / self.name


def pretrained_ref(backbone: str, pooling: str = "avg", version_id: int | None = None) -> ModelRef:
    if backbone == "efficientnet_lite0":
        return ModelRef(
            lite0_model_name(settings.EMBEDDER_IMAGE_SIZE, settings.EMBEDDER_GALLERY_VIEWS),
            LITE0_DIM,
            backbone,
            "gem",
            version_id=version_id,
        )
    if backbone in TORCHVISION_BACKBONES:
        return ModelRef(
            f"{backbone}-{pooling}",
            TORCHVISION_BACKBONES[backbone][1],
            backbone,
            pooling,
            version_id=version_id,
        )
    raise ValueError(f"Unknown embedder {backbone!r}")


def default_model() -> ModelRef:
    return pretrained_ref(settings.EMBEDDER)


def model_ref(version: "ModelVersion") -> ModelRef:
    if version.kind == "pretrained":
        return pretrained_ref(version.spec["backbone"], version.spec.get("pooling", "avg"), version.pk)
    return ModelRef(
        version.name,
        version.dim,
        "learned",
        weights=str(version.weights_path),
        bits=version.bits,
        version_id=version.pk,
    )


@dataclass(frozen=True)
class _Belief:
    ref: ModelRef
    at: float  # time.monotonic() when it was read


_belief: _Belief | None = None  # what this process believes is active (replaced whole, never edited)


def remember_active_model(ref: ModelRef, *, at: float | None = None) -> None:
    """What this process believes is active, for up to ACTIVE_TTL_SECONDS from `at` (a
    `time.monotonic()` reading, default now): `active_model()` records each database read here."""
    global _belief
    _belief = _Belief(ref, time.monotonic() if at is None else at)


def forget_active_model() -> None:
    """The next `active_model()` reads the database."""
    global _belief
    _belief = None


def active_model(*, fresh: bool = False) -> ModelRef:
    """Searches take the model read within the last second; the writers of vectors and of
    the index read it `fresh`, so that none acts on a switch another process has just made."""
    now = time.monotonic()
    belief = _belief
    if not fresh and belief is not None and now - belief.at < ACTIVE_TTL_SECONDS:
        return belief.ref
    version = ModelVersion.objects.filter(is_active=True).first()
    ref = model_ref(version) if version else default_model()
    remember_active_model(ref, at=now)
    return ref


def copy_model() -> ModelRef:
    """The model whose vectors find copies of a photo: the configured pretrained embedder.
    Its vectors and index are kept whichever model serves similarity, so switching to a
    model trained to gather whole categories never loses copies."""
    return default_model()


# The copy model's detail views (`COPY_DETAILS`): its stage-5 features (the part of the vector
# with the most local detail, 192 numbers) of the four 60 % corners of each catalogue photo. A
# zoom on a detail is nearest to the view that holds it (measured on 1,500 product photos: a
# 40 % zoom's item in the top 10 by its vector 0.55 -> 0.90), but the pipeline ranks it first
# only when local features verify it, which they rarely do (bench/robust.py: zoom 0.54 -> 0.58).
DETAIL_SHARE = 0.6
DETAIL_GRID = 2


def detail_model() -> ModelRef | None:
    """The index of the catalogue photos' details (`COPY_DETAILS`), which finds the item of
    a close-up of part of it; the default embedder's only."""
    copies = copy_model()
    if not settings.COPY_DETAILS or copies.backbone != "efficientnet_lite0":
        return None
    return ModelRef(
        f"{copies.name}-details{DETAIL_GRID}x{DETAIL_GRID}-{round(DETAIL_SHARE * 100)}",
        LITE0_DIM - LITE0_FINAL_DIM,
        copies.backbone,
        "details",
        views=DETAIL_GRID * DETAIL_GRID,
    )


def served_models(active: ModelRef | None = None) -> list[ModelRef]:
    """Every model whose vectors each searchable image needs: the active one, the copy
    model when that is another, and the copy model's detail views when they are kept."""
    active = active or active_model()
    copies = copy_model()
    refs = [active] if active.name == copies.name else [active, copies]
    details = detail_model()
    return [*refs, details] if details else refs


def embedder_identity(ref: ModelRef | None = None) -> tuple[str, int]:
    """(model name, dimension) of an embedder without loading it: the index writer needs
    only these, and should not hold a copy of the network in memory."""
    ref = ref or active_model()
    return ref.name, ref.dim
