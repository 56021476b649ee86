from pathlib import Path

from django import forms
from django.conf import settings

from .models import ImportJob, ModelVersion


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

    def clean(self):
        data = super().clean()
        kind = data.get("source_kind")
        if kind == ImportJob.Source.ZIP and not data.get("archive"):
            self.add_error("archive", "Choose a ZIP file to upload.")
        if kind in (ImportJob.Source.FOLDER, ImportJob.Source.MANIFEST) and not data.get("path", "").strip():
            self.add_error("path", "Give a path under the import root.")
        return data


def _backbone_choices():
    from .embedders.catalog import TORCHVISION_BACKBONES

    names = ["efficientnet_lite0", *TORCHVISION_BACKBONES]
    return [("", f"Default ({settings.EMBEDDER})")] + [(name, name) for name in names]


class ModelTrainingForm(forms.Form):
    """A new model version: a network to train here, or a pretrained backbone."""

    TRAINING_FIELDS = ("data", "minutes", "epochs", "bits", "dim", "image_size")
    PRETRAINED_FIELDS = ("backbone", "pooling")

    kind = forms.ChoiceField(
        choices=[c for c in ModelVersion.Kind.choices if c[0] != ModelVersion.Kind.PRETRAINED]
        + [c for c in ModelVersion.Kind.choices if c[0] == ModelVersion.Kind.PRETRAINED],
        initial=ModelVersion.Kind.METRIC,
    )
    data = forms.CharField(
        required=False,
        max_length=1000,
        label="Training images",
        help_text="A folder or ZIP on the server (sub-folders are categories); empty: the gallery.",
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
        help_text="Optional: learn a hash code of this many bits (8-256; metric, triplet, contrastive).",
    )
    dim = forms.IntegerField(required=False, min_value=2, label="Dimension", help_text="Optional.")
    image_size = forms.IntegerField(
        required=False, min_value=16, max_value=1024, help_text="Optional: input size in pixels."
    )
    backbone = forms.ChoiceField(required=False, choices=_backbone_choices)
    pooling = forms.ChoiceField(
        required=False,
        choices=[("avg", "Average"), ("gem", "GeM")],
        initial="avg",
        help_text="Ignored by efficientnet_lite0 (always GeM).",
    )

    def service_kwargs(self) -> dict:
        """Arguments of `services.model_version_create` (call after is_valid())."""
        data = self.cleaned_data
        kind = data["kind"]
        if kind == ModelVersion.Kind.PRETRAINED:
            options = {"backbone": data.get("backbone") or "", "pooling": data.get("pooling") or "avg"}
            return {"kind": kind, "options": options}
        options = {key: data[key] for key in ("dim", "image_size") if data.get(key)}
        minutes = data.get("minutes")
        return {
            "kind": kind,
            "data": (data.get("data") or "").strip(),
            "minutes": 10.0 if minutes is None else minutes,
            "epochs": data.get("epochs") or None,
            "bits": data.get("bits") or 0,
            "options": options,
        }


class ModelEvaluateForm(forms.Form):
    """Run an evaluation protocol on a ready model version."""

    protocol = forms.ChoiceField(choices=[])
    data = forms.CharField(
        max_length=1000, label="Data", help_text="The protocol's archive or folder on the server."
    )
    queries = forms.IntegerField(required=False, min_value=1, label="Query limit")
    db = forms.IntegerField(required=False, min_value=1, label="Database limit")

    def __init__(self, *args, **kwargs):
        from .learning.protocols import PROTOCOLS

        super().__init__(*args, **kwargs)
        self.fields["protocol"].choices = [(p, p) for p in PROTOCOLS]

    def clean_data(self):
        value = self.cleaned_data["data"].strip()
        if not Path(value).exists():
            raise forms.ValidationError(f"{value} does not exist on the server.")
        return value

    def limits(self) -> dict:
        return {key: self.cleaned_data[key] for key in ("queries", "db") if self.cleaned_data.get(key)}
