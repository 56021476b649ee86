from pathlib import Path
from typing import Any

from django import forms
from django.conf import settings

from .embedders.registry import TORCHVISION_BACKBONES
from .importing import SourceError
from .learning.protocols import PROTOCOLS
from .learning.spec import BITS_KINDS, BITS_RANGE, KINDS, OPTIONS, Option
from .models import ImportJob, ModelVersion
from .services import import_root_path


class ImportJobForm(forms.Form):
    source_kind = forms.ChoiceField(choices=ImportJob.Source.choices, label="Import from")
    archive = forms.FileField(
        required=False, label="ZIP archive", help_text="Streamed to disk; several GB are fine."
    )
    path = forms.CharField(
        required=False,
        label="Folder or manifest",
        help_text="Relative to the import root on the server (a folder, or a .csv / .jsonl manifest).",
    )
    category = forms.CharField(
        required=False, max_length=100, help_text="Optional: overrides sub-folder names."
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        kind = data.get("source_kind")
        if kind == ImportJob.Source.ZIP and not data.get("archive"):
            self.add_error("archive", "Choose a ZIP file to upload.")
        if kind in (ImportJob.Source.FOLDER, ImportJob.Source.MANIFEST) and not data.get("path", "").strip():
            self.add_error("path", "Give a path under the import root.")
        return data


def _backbone_choices() -> list[tuple[str, str]]:
    names = ["efficientnet_lite0", *TORCHVISION_BACKBONES]
    return [("", f"Default ({settings.EMBEDDER})")] + [(name, name) for name in names]


def _kind_choices() -> list[tuple[str, str]]:
    """The kinds trained here first, then the pretrained backbone."""
    trained = [(kind.value, kind.label) for kind, rules in KINDS.items() if rules.trained]
    return trained + [(kind.value, kind.label) for kind, rules in KINDS.items() if not rules.trained]


def _option_field(option: Option) -> forms.Field:
    """The form field of a training option (learning.spec), always optional."""
    common: dict[str, Any] = {
        "required": False,
        "help_text": f"Optional: {option.help}" if option.help else "Optional.",
    }
    if option.label:
        common["label"] = option.label
    if option.choices:
        return forms.ChoiceField(choices=[("", "Default"), *((c, c) for c in option.choices)], **common)
    if option.type is str:
        return forms.CharField(**common)
    field = forms.IntegerField if option.type is int else forms.FloatField
    return field(min_value=option.min_value, max_value=option.max_value, **common)


FORM_OPTIONS = tuple(option for option in OPTIONS if option.in_form)


class ModelTrainingForm(forms.Form):
    """A new model version: a network to train here, or a pretrained backbone. The training
    options it offers are those of `learning.spec.OPTIONS` marked `in_form`, after `bits`."""

    TRAINING_FIELDS = ("data", "minutes", "epochs", "bits", *(option.name for option in FORM_OPTIONS))
    PRETRAINED_FIELDS = ("backbone", "pooling")

    kind = forms.ChoiceField(choices=_kind_choices(), initial=ModelVersion.Kind.METRIC)
    data = forms.CharField(  # type: ignore[assignment]  # a field, not BaseForm.data: the form metaclass moves it
        required=False,
        max_length=1000,
        label="Training images",
        help_text="A folder or ZIP under the import root (sub-folders are categories); empty: the gallery.",
    )
    minutes = forms.FloatField(
        required=False, min_value=0, initial=10, help_text="Time budget; the run ends annealed when cut."
    )
    epochs = forms.FloatField(
        required=False, min_value=0, help_text="Optional: stop after this many epochs instead."
    )
    bits = forms.IntegerField(
        required=False,
        min_value=0,
        help_text=(
            f"Optional: learn a hash code of this many bits ({BITS_RANGE[0]}-{BITS_RANGE[1]}; "
            f"{', '.join(BITS_KINDS)})."
        ),
    )
    backbone = forms.ChoiceField(required=False, choices=_backbone_choices)
    pooling = forms.ChoiceField(
        required=False,
        choices=[("avg", "Average"), ("gem", "GeM")],
        initial="avg",
        help_text="Ignored by efficientnet_lite0 (always GeM).",
    )

    def clean_data(self) -> str:
        value: str = (self.cleaned_data.get("data") or "").strip()
        return str(_under_data_root(value)) if value else ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for option in FORM_OPTIONS:
            self.fields[option.name] = _option_field(option)
        names = list(self.fields)
        after_bits = names.index("bits") + 1
        self.order_fields(names[:after_bits] + [option.name for option in FORM_OPTIONS] + names[after_bits:])

    def service_kwargs(self) -> dict[str, Any]:
        """Arguments of `services.model_version_create` (call after is_valid())."""
        data = self.cleaned_data
        kind = data["kind"]
        if kind == ModelVersion.Kind.PRETRAINED:
            options = {"backbone": data.get("backbone") or "", "pooling": data.get("pooling") or "avg"}
            return {"kind": kind, "options": options}
        options = {option.name: data[option.name] for option in FORM_OPTIONS if data.get(option.name)}
        minutes = data.get("minutes")
        return {
            "kind": kind,
            "data": (data.get("data") or "").strip(),
            "minutes": 10.0 if minutes is None else minutes,
            "epochs": data.get("epochs") or None,
            "bits": data.get("bits") or 0,
            "options": options,
        }


def _under_data_root(value: str) -> Path:
    """Server paths staff name in the admin lie under IMPORT_ROOT (as import sources do); the
    command line, run by the operator, may name any."""
    try:
        return import_root_path(value)
    except SourceError as exc:
        raise forms.ValidationError(str(exc)) from None


def _protocol_choices() -> list[tuple[str, str]]:
    return [(p, p) for p in PROTOCOLS]


class ModelEvaluateForm(forms.Form):
    """Run an evaluation protocol on a ready model version."""

    protocol = forms.ChoiceField(choices=_protocol_choices)
    data = forms.CharField(  # type: ignore[assignment]  # a field, not BaseForm.data: the form metaclass moves it
        max_length=1000, label="Data", help_text="The protocol's archive or folder, under the import root."
    )
    queries = forms.IntegerField(required=False, min_value=1, label="Query limit")
    db = forms.IntegerField(required=False, min_value=1, label="Database limit")

    def clean_data(self) -> str:
        return str(_under_data_root(self.cleaned_data["data"].strip()))

    def limits(self) -> dict[str, int]:
        return {key: self.cleaned_data[key] for key in ("queries", "db") if self.cleaned_data.get(key)}
