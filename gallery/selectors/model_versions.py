"""Reads of model versions: look-ups by name, and what the admin shows of a run."""

from typing import Any

from ..models import ModelVersion

_HIDDEN_FIGURES = {"confusion", "confusion_png", "classes", "protocol", "data", "evaluated_at"}


def model_version_get(key: str) -> ModelVersion | None:
    """A version by name, or by id when `key` is a number."""
    version = ModelVersion.objects.filter(name=key).first()
    if version is None and key.isdigit():
        version = ModelVersion.objects.filter(pk=int(key)).first()
    return version


def model_version_active() -> ModelVersion | None:
    return ModelVersion.objects.filter(is_active=True).first()


def _fraction(done: float, total: float) -> float:
    return round(100.0 * done / total, 1) if total else 0.0


def model_training_percent(version: ModelVersion) -> float:
    if version.state == ModelVersion.State.READY:
        return 100.0
    p = version.progress or {}
    elapsed, eta = p.get("elapsed"), p.get("eta_seconds")
    if eta is not None and elapsed is not None:
        return min(100.0, _fraction(elapsed, elapsed + eta))
    return min(100.0, _fraction(p.get("done") or 0, p.get("total") or 0))


def model_activation_percent(version: ModelVersion) -> float:
    if version.activation == ModelVersion.Activation.ACTIVE:
        return 100.0
    p = version.activation_progress or {}
    return min(100.0, _fraction(p.get("done") or 0, p.get("total") or 0))


def model_evaluation_rows(figures: dict[str, Any]) -> list[list[Any]]:
    """[label, value] rows of a protocol's scalar figures; nested dicts one level deep."""
    rows: list[list[Any]] = []
    for key, value in figures.items():
        if key in _HIDDEN_FIGURES:
            continue
        if isinstance(value, dict):
            rows += [[f"{key} {k}", v] for k, v in value.items() if not isinstance(v, dict | list)]
        elif not isinstance(value, list):
            rows.append([key, value])
    return rows


def _run_headline(version: ModelVersion) -> str | None:
    """Where a run stands, unless it is ready."""
    p = version.progress or {}
    if version.state == ModelVersion.State.QUEUED:
        return "queued"
    if version.state == ModelVersion.State.TRAINING:
        if p.get("stage") == "training" or p.get("epoch"):
            loss = p.get("loss")
            return f"epoch {p.get('epoch', 0):.1f}" + (f", loss {loss:.3g}" if loss is not None else "")
        return f"{p.get('stage') or 'starting'} {p.get('done', 0)}/{p.get('total', 0)}"
    if version.state == ModelVersion.State.FAILED:
        return f"failed: {version.error[:80]}"
    if version.state == ModelVersion.State.CANCELLED:
        return f"cancelled at epoch {p.get('epoch', 0):.1f}" if p.get("epoch") else "cancelled"
    return None


def model_version_headline(version: ModelVersion) -> str:
    """One line for the admin's list: the run's progress, or the model's main figures."""
    running = _run_headline(version)
    if running is not None:
        return running
    parts = []
    evaluations = version.evaluations or {}
    if "map@1000" in evaluations.get("cifar10", {}):
        parts.append(f"mAP@1000 {evaluations['cifar10']['map@1000']:.3f}")
    if "recall@1" in evaluations.get("neardup", {}):
        parts.append(f"recall@1 {evaluations['neardup']['recall@1']:.3f}")
    if not parts and version.metrics.get("final_loss") is not None:
        parts.append(f"{version.metrics.get('epochs', 0)} epochs, loss {version.metrics['final_loss']:.3g}")
    if version.activation == ModelVersion.Activation.ACTIVATING:
        parts.append(f"activating {model_activation_percent(version):.0f}%")
    return ", ".join(parts) or "ready"
