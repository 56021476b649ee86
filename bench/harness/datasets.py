"""The shared datasets: finding them, listing the images of a ZIP, writing a subset ZIP, and
telling which photos of a catalogue are pixel-identical."""

from __future__ import annotations

import hashlib
import io
import sys
from collections import defaultdict
from pathlib import Path, PurePosixPath

from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}


def require_dataset(datasets: Path, name: str) -> Path:
    path = Path(datasets) / name
    if not path.is_file():
        sys.exit(
            f"Dataset not found: {path}\n"
            f"The benchmarks read the shared datasets in place; pass --datasets DIR if they are elsewhere."
        )
    return path


def zip_image_names(zip_path: Path, prefix: str = "") -> list[str]:
    """Sorted image entries of a ZIP (as import_images would take them), optionally under `prefix`."""
    import zipfile
    from pathlib import PurePosixPath

    with zipfile.ZipFile(zip_path) as zf:
        return sorted(
            i.filename
            for i in zf.infolist()
            if not i.is_dir()
            and i.filename.startswith(prefix)
            and PurePosixPath(i.filename).suffix.lower() in IMAGE_EXTENSIONS
            and not any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(i.filename).parts)
        )


def write_subset_zip(zip_path: Path, names: list[str], dest: Path) -> Path:
    """A temporary ZIP holding only `names` (same paths), stored without recompression."""
    import zipfile

    with zipfile.ZipFile(zip_path) as src, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as out:
        for name in names:
            out.writestr(name, src.read(name))
    return dest


def pixel_groups(files: dict[str, bytes]) -> dict[str, set[str]]:
    """stem -> stems of every catalogue photo with identical decoded pixels (itself included)."""
    by_hash = defaultdict(set)
    for name, data in files.items():
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
            digest = hashlib.sha1(rgb.tobytes() + repr(rgb.size).encode()).hexdigest()
        by_hash[digest].add(PurePosixPath(name).stem)
    return {stem: group for group in by_hash.values() for stem in group}
