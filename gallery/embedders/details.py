"""The copy model's detail views (`registry.detail_model`), built on whatever embeds the copy
model's queries (with torch, or its torch-free graph): no torch of its own."""

import numpy as np
from PIL import Image

from .interface import Embedder
from .registry import LITE0_DIM, LITE0_FINAL_DIM


class LiteDetailEmbedder(Embedder):
    """The detail views of a catalogue photo (`registry.detail_model`): the stage-5 part of
    the copy model's vector of each cell of a grid of corner crops, stored as one row of
    `grid * grid` views. A query's view is the same part of its copy vector (no extra pass):
    a close-up of a detail looks like the corner crop that holds it."""

    def __init__(self, name: str, whole: Embedder, *, share: float, grid: int) -> None:
        self.name, self.whole, self.share, self.grid = name, whole, share, grid
        self.dim = LITE0_DIM - LITE0_FINAL_DIM

    def view_of(self, copy_vectors: np.ndarray) -> np.ndarray:
        """The detail view of copy-model vectors (rows)."""
        part = np.asarray(copy_vectors, dtype=np.float32).reshape(-1, LITE0_DIM)[:, LITE0_FINAL_DIM:]
        out: np.ndarray = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        return out

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        return self.view_of(self.whole.embed(images))

    def cells(self, im: Image.Image) -> list[Image.Image]:
        w, h = im.size
        cw, ch = max(1, round(w * self.share)), max(1, round(h * self.share))
        steps = max(1, self.grid - 1)
        return [
            im.crop((x, y, x + cw, y + ch))
            for y in (round((h - ch) * j / steps) for j in range(self.grid))
            for x in (round((w - cw) * i / steps) for i in range(self.grid))
        ]

    def embed_gallery(self, images: list[Image.Image]) -> np.ndarray:
        views = self.embed([cell for im in images for cell in self.cells(im)])
        return views.reshape(len(images), self.grid * self.grid * self.dim)
