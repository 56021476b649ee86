"""Training data: labelled images from the gallery, a folder or a ZIP archive.

In a folder or archive the name of the folder holding a file is its category
(`train/cat/0001.jpg` -> `cat`). An archive with `train/` and `test/` parts (the CIFAR-10
layout) gives its `train/` part for training and its `test/` part for evaluation."""

import io
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from django.core.files.storage import default_storage
from PIL import Image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}

Opener = Callable[[str], Image.Image]  # key -> RGB image


@dataclass
class LabelledImages:
    """Keys, integer labels (-1 = no category) and a way to open each image."""

    keys: list[str]
    labels: np.ndarray
    classes: list[str]
    source: str
    _opener: Opener = field(repr=False)

    def __len__(self) -> int:
        return len(self.keys)

    def open(self, i: int) -> Image.Image:
        return self._opener(self.keys[i])

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())

    def subset(self, indices: Sequence[int] | np.ndarray) -> "LabelledImages":
        indices = np.asarray(indices, dtype=np.int64)
        return LabelledImages(
            [self.keys[i] for i in indices], self.labels[indices], self.classes, self.source, self._opener
        )


def _labels_of(categories: list[str]) -> tuple[np.ndarray, list[str]]:
    classes = sorted({c for c in categories if c})
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup.get(c, -1) for c in categories], dtype=np.int64), classes


def _split_of(paths: list[PurePosixPath], split: str) -> list[PurePosixPath]:
    """The `split` part (`train` or `test`) when the top folders are exactly train/test."""
    tops = {p.parts[0] for p in paths if len(p.parts) > 1}
    if {"train", "test"} <= tops:
        return [p for p in paths if p.parts[0] == split]
    return paths


class _ZipOpener:
    """Opens members of one archive; reopens it in a forked child (zip handles don't survive)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip: zipfile.ZipFile | None = None

    def __call__(self, key: str) -> Image.Image:
        if self._zip is None:
            self._zip = zipfile.ZipFile(self.path)
        with Image.open(io.BytesIO(self._zip.read(key))) as im:
            return im.convert("RGB")

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "_zip": None}


def _open_file(key: str) -> Image.Image:
    with Image.open(key) as im:
        return im.convert("RGB")


def from_path(path: str | Path, *, split: str = "train") -> LabelledImages:
    path = Path(path)
    if path.is_dir():
        files = sorted(
            PurePosixPath(p.relative_to(path).as_posix())
            for p in path.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        files = _split_of(files, split)
        keys = [str(path / f) for f in files]
        opener: Opener = _open_file
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            files = sorted(
                PurePosixPath(n)
                for n in zf.namelist()
                if not n.endswith("/") and PurePosixPath(n).suffix.lower() in IMAGE_SUFFIXES
            )
        files = _split_of(files, split)
        keys = [str(f) for f in files]
        opener = _ZipOpener(path)
    else:
        raise ValueError(f"{path} is neither a folder nor a ZIP archive")
    if not files:
        raise ValueError(f"No images in {path}" + (f" ({split}/)" if split else ""))
    categories = [f.parent.name if len(f.parts) > 1 else "" for f in files]
    labels, classes = _labels_of(categories)
    return LabelledImages(keys, labels, classes, str(path), opener)


def _open_gallery_file(key: str) -> Image.Image:
    with default_storage.open(key) as fh, Image.open(fh) as im:
        return im.convert("RGB")


def from_gallery(rows: list[tuple[str, str]]) -> LabelledImages:
    """Stored images as (file name in the default storage, category) rows, the category as
    the label. The caller reads the rows (`selectors.training_rows`): learning never
    queries the gallery itself."""
    if not rows:
        raise ValueError("The gallery has no searchable images to train on")
    labels, classes = _labels_of([c for _, c in rows])
    return LabelledImages([f for f, _ in rows], labels, classes, "gallery", _open_gallery_file)
