from django import forms

from .models import ImportJob


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
