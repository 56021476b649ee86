"""Reading a folder or a ZIP of images for import: yields (relative path, category, bytes or
an error), never extracting anything to disk. Entries that could not be images (other
extensions, hidden files, nested archives) are skipped; unsafe or oversized ones are
reported as errors and the rest goes on."""

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
MAX_COMPRESSION_RATIO = 200


@dataclass
class ImportEntry:
    path: str  # as written in the folder or archive
    category: str
    read: callable  # -> bytes
    size: int
    error: str = ""


def _is_candidate(parts: tuple[str, ...]) -> bool:
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return PurePosixPath(parts[-1]).suffix.lower() in IMAGE_EXTENSIONS


def _category(parts: tuple[str, ...], default: str) -> str:
    return default or (parts[-2] if len(parts) > 1 else "")


def iter_entries(source: str | Path, *, category: str = "", max_bytes: int) -> Iterator[ImportEntry]:
    source = Path(source)
    if source.is_dir():
        yield from _iter_folder(source, category, max_bytes)
    elif zipfile.is_zipfile(source):
        yield from _iter_zip(source, category, max_bytes)
    else:
        raise ValueError(f"{source} is neither a folder nor a ZIP archive.")


def _iter_folder(root: Path, category: str, max_bytes: int) -> Iterator[ImportEntry]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_symlink() or not path.is_file() or not _is_candidate(rel.parts):
            continue
        size = path.stat().st_size
        entry = ImportEntry(str(rel), _category(rel.parts, category), path.read_bytes, size)
        if size > max_bytes:
            entry.error = f"too large ({size} bytes; the limit is {max_bytes})"
        yield entry


def _iter_zip(archive: Path, category: str, max_bytes: int) -> Iterator[ImportEntry]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            if info.is_dir():
                continue
            name = info.filename
            parts = PurePosixPath(name).parts
            if not parts:
                continue
            unsafe = name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0]
            if not unsafe and not _is_candidate(parts):
                continue
            entry = ImportEntry(name, _category(parts, category), lambda info=info: zf.read(info), info.file_size)
            if unsafe:
                entry.error = "unsafe path in the archive"
            elif info.file_size > max_bytes:
                entry.error = f"too large ({info.file_size} bytes; the limit is {max_bytes})"
            elif info.compress_size and info.file_size / info.compress_size > MAX_COMPRESSION_RATIO:
                entry.error = "suspicious compression ratio (archive bomb?)"
            yield entry
