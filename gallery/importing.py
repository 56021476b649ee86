"""Listing and reading the files of an import source: a folder, a ZIP archive, or a manifest
(CSV or JSON lines with file, title, category, tags, external_id). Nothing is extracted to
disk. Entries that can never be imported are listed with the reason (unsafe paths, links,
nested archives, other files, archive bombs), so a job reports them and goes on."""

import csv
import io
import json
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
ARCHIVE_EXTENSIONS = {".zip", ".tar", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar"}


class SourceError(ValueError):
    """The source as a whole cannot be read (missing, not a ZIP, bad manifest)."""


@dataclass
class Limits:
    max_file_bytes: int
    max_total_bytes: int
    max_ratio: int


@dataclass
class Entry:
    path: str  # relative to the source (folder, archive, or the manifest's folder)
    title: str = ""
    category: str = ""
    tags: list[str] = field(default_factory=list)
    external_id: str = ""
    error: str = ""


def _ignored(parts: Sequence[str]) -> bool:
    """Operating-system litter, not worth a line in the report."""
    return any(p == "__MACOSX" or p in (".DS_Store", "Thumbs.db") or p.startswith("._") for p in parts)


def _classify(parts: Sequence[str]) -> str:
    suffix = PurePosixPath(parts[-1]).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return ""
    if suffix in ARCHIVE_EXTENSIONS:
        return "nested archive (skipped)"
    return "not an image file (skipped)"


def _entry(parts: Sequence[str], category: str, error: str = "") -> Entry:
    return Entry(
        path="/".join(parts),
        title=PurePosixPath(parts[-1]).stem,
        category=category or (parts[-2] if len(parts) > 1 else ""),
        error=error,
    )


def list_entries(kind: str, path: str | Path, *, category: str = "", limits: Limits) -> list[Entry]:
    path = Path(path)
    if kind == "folder":
        return _list_folder(path, category, limits)
    if kind == "zip":
        return _list_zip(path, category, limits)
    if kind == "manifest":
        return _list_manifest(path, category, limits)
    raise SourceError(f"Unknown source kind {kind!r}")


def guess_kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if zipfile.is_zipfile(path):
        return "zip"
    if path.suffix.lower() in (".csv", ".jsonl", ".ndjson"):
        return "manifest"
    raise SourceError(f"{path} is neither a folder nor a ZIP archive (nor a .csv/.jsonl manifest).")


def _list_folder(root: Path, category: str, limits: Limits) -> list[Entry]:
    if not root.is_dir():
        raise SourceError(f"{root} is not a folder.")
    entries, total = [], 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).parts
        if _ignored(rel) or any(p.startswith(".") for p in rel) or path.is_dir():
            continue
        if path.is_symlink():
            entries.append(_entry(rel, category, "symbolic link (refused)"))
            continue
        error = _classify(rel)
        if not error:
            size = path.stat().st_size
            total += size
            if size > limits.max_file_bytes:
                error = f"too large ({size} bytes; the limit is {limits.max_file_bytes})"
            elif total > limits.max_total_bytes:
                error = "the import exceeds its total size limit"
        entries.append(_entry(rel, category, error))
    return entries


def _list_zip(archive: Path, category: str, limits: Limits) -> list[Entry]:
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise SourceError(f"{archive.name} is not a readable ZIP archive ({exc}).") from exc
    entries, total = [], 0
    with zf:
        for info in zf.infolist():
            name = info.filename
            parts = tuple(p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", "/"))
            if info.is_dir() or not parts or _ignored(parts):
                continue
            error = _zip_member_refusal(info, parts)
            if not error:
                total += info.file_size
                error = _zip_size_refusal(info, total, limits)
            entry = _entry(parts, category, error)
            entry.path = name  # read back by its exact name
            entries.append(entry)
    return entries


def _zip_member_refusal(info: zipfile.ZipInfo, parts: Sequence[str]) -> str:
    """Why a member is never read (an unsafe path, a link, not an image), or ""."""
    if info.filename.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]:
        return "unsafe path (escapes the archive; refused)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link (refused)"
    return _classify(parts)


def _zip_size_refusal(info: zipfile.ZipInfo, total: int, limits: Limits) -> str:
    """The archive-bomb limits: one member's size and ratio, everything so far; or ""."""
    if info.file_size > limits.max_file_bytes:
        return f"too large ({info.file_size} bytes; the limit is {limits.max_file_bytes})"
    if info.compress_size and info.file_size / info.compress_size > limits.max_ratio:
        return f"compression ratio over {limits.max_ratio} (archive bomb?; refused)"
    if total > limits.max_total_bytes:
        return "the archive exceeds the total uncompressed size limit (refused)"
    return ""


def _manifest_rows(manifest: Path) -> list[dict[str, Any]]:
    """The rows of a CSV or JSON-lines manifest."""
    try:
        text = manifest.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SourceError(f"Cannot read the manifest {manifest.name}: {exc}") from exc
    if manifest.suffix.lower() == ".csv":
        return list(csv.DictReader(io.StringIO(text)))
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SourceError(f"{manifest.name} line {number} is not JSON: {exc}") from exc
    return rows


def _list_manifest(manifest: Path, category: str, limits: Limits) -> list[Entry]:
    base = manifest.parent.resolve()
    entries = []
    for row in _manifest_rows(manifest):
        file = str(row.get("file") or "").strip()
        tags = row.get("tags") or []
        if isinstance(tags, str):
            tags = [t.strip() for t in tags.replace(";", ",").split(",") if t.strip()]
        entry = Entry(
            path=file,
            title=str(row.get("title") or PurePosixPath(file).stem),
            category=category or str(row.get("category") or ""),
            tags=tags,
            external_id=str(row.get("external_id") or ""),
        )
        entry.error = _manifest_file_refusal(base, file, limits)
        entries.append(entry)
    return entries


def _manifest_file_refusal(base: Path, file: str, limits: Limits) -> str:
    """Why a file a manifest names is never read (missing, outside its folder, a link, not an
    image, too large), or ""."""
    if not file:
        return "no file given"
    target = (base / file).resolve()
    if not target.is_relative_to(base):
        return "unsafe path (outside the manifest's folder; refused)"
    if (base / file).is_symlink():
        return "symbolic link (refused)"
    if not target.is_file():
        return "file not found"
    error = _classify(PurePosixPath(file).parts)
    if not error and target.stat().st_size > limits.max_file_bytes:
        error = f"too large ({target.stat().st_size} bytes; the limit is {limits.max_file_bytes})"
    return error


class SourceReader:
    """Reads entries' bytes; open once per batch of entries."""

    def __init__(self, kind: str, path: str | Path) -> None:
        self.kind, self.path = kind, Path(path)
        self._zip: zipfile.ZipFile | None = None

    def __enter__(self) -> "SourceReader":
        if self.kind == "zip":
            self._zip = zipfile.ZipFile(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._zip:
            self._zip.close()

    def read(self, entry_path: str, max_bytes: int) -> bytes:
        if self._zip:
            with self._zip.open(entry_path) as fh:  # never trust the header's size: cap the read
                data = fh.read(max_bytes + 1)
        else:
            base = self.path if self.kind == "folder" else self.path.parent
            with open(base / entry_path, "rb") as fh:
                data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ValueError(f"too large (over {max_bytes} bytes)")
        return data
