"""Synthetic gallery items for the scale benches: realistic vectors mixed from real ones, and the
`Image`/`Embedding` rows the pipeline would leave for them (written in bulk, status indexed).

The row writers need Django set up (`BenchApp.setup_django`); the vector functions only NumPy."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np


@dataclass
class Mixer:
    """Mixtures of a real vector and one of its 10 nearest real neighbours with a little noise of
    the real vectors' own per-dimension spread: synthetic vectors that keep the real ones'
    clusters and spread (random unit vectors have neither)."""

    real: np.ndarray
    neighbours: np.ndarray
    spread: np.ndarray

    @classmethod
    def of(cls, real: np.ndarray) -> Mixer:
        real = np.asarray(real, dtype=np.float32)
        neighbours = np.empty((len(real), 10), dtype=np.int64)
        for start in range(0, len(real), 2000):  # by blocks: 60,000 real vectors fit
            sims = real[start : start + 2000] @ real.T
            for row in range(len(sims)):
                sims[row, start + row] = -2
            top = np.argpartition(-sims, 10, axis=1)[:, :10]
            order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
            neighbours[start : start + 2000] = np.take_along_axis(top, order, axis=1)
        return cls(real, neighbours, real.std(axis=0))

    def mix(self, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`m` unit vectors and, for each, the index of the real vector it was mixed from."""
        n, dim = self.real.shape
        i = rng.integers(0, n, m)
        j = self.neighbours[i, rng.integers(0, 10, m)]
        a = rng.uniform(0.0, 0.5, (m, 1)).astype(np.float32)
        noise = 0.3 * self.spread * rng.standard_normal((m, dim), dtype=np.float32)
        v = self.real[i] + a * (self.real[j] - self.real[i]) + noise
        return v / np.linalg.norm(v, axis=1, keepdims=True), i


def synthesise(real: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """`total` vectors: the real ones, then `Mixer` mixtures of them."""
    n, dim = real.shape
    mixer = Mixer.of(real)
    out = np.empty((total, dim), dtype=np.float32)
    out[:n] = real
    for start in range(n, total, 50000):
        m = min(50000, total - start)
        out[start : start + m] = mixer.mix(m, rng)[0]
    return out


def nearby_codes(codes: np.ndarray, flips: int, rng: np.random.Generator) -> np.ndarray:
    """Each 256-bit code (rows of 32 bytes) with `flips` random bits flipped: hashes of other
    photos of a similar kind, which cluster as real hashes do (random codes would not)."""
    bits = np.unpackbits(codes, axis=1)
    order = np.argsort(rng.random(bits.shape), axis=1)[:, :flips]
    np.put_along_axis(bits, order, 1 - np.take_along_axis(bits, order, axis=1), axis=1)
    return np.packbits(bits, axis=1)


def synthetic_rows(
    template,
    seed: int,
    start: int,
    vectors: np.ndarray,
    codes: np.ndarray,
    model: str,
    *,
    categories: list[str] | None = None,
    views: np.ndarray | None = None,
    details_ref=None,
) -> list[int]:
    """Image rows for synthetic items start.. with their Embedding rows and perceptual hashes,
    as the pipeline leaves an item (without them the app's backfill would embed them all
    again: the database is the truth). Returns their ids."""
    from django.db import transaction
    from django.utils import timezone

    from gallery.models import Embedding
    from gallery.models import Image as Item

    base = template_fields(Item, template)
    base["indexed_at"] = timezone.now()
    rows = [Item(**synthetic_fields(Item, base, seed, start + i)) for i in range(len(vectors))]
    for n, (row, code) in enumerate(zip(rows, codes)):
        row.pdq = code.tobytes()
        if categories is not None:
            row.category = categories[n]
    with transaction.atomic():
        ids = [row.pk for row in Item.objects.bulk_create(rows, batch_size=2000)]
        Embedding.objects.bulk_create(
            [
                Embedding(image_id=pk, model_name=model, dim=vectors.shape[1], vector=vec.tobytes())
                for pk, vec in zip(ids, vectors)
            ],
            batch_size=2000,
        )
        if views is not None:
            Embedding.objects.bulk_create(
                [
                    Embedding(
                        image_id=pk, model_name=details_ref.name, dim=views.shape[1], vector=vec.tobytes()
                    )
                    for pk, vec in zip(ids, views)
                ],
                batch_size=2000,
            )
    return ids


def template_fields(model, template) -> dict:
    """The template row's field values that synthetic rows copy (so a field the model gains
    keeps a valid value); unique fields are None here and set per row."""
    values = {}
    for field in model._meta.concrete_fields:
        if field.primary_key or getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False):
            continue
        if field.unique:
            values[field.attname] = None
        else:
            value = getattr(template, field.attname)
            values[field.attname] = value.name if hasattr(value, "storage") else value
    return values


def synthetic_fields(model, base: dict, seed: int, n: int) -> dict:
    """Field values of synthetic item n: the template's, with its own title, hash and unique
    values, status indexed."""
    values = dict(base)
    for field in model._meta.concrete_fields:
        if field.unique and not field.primary_key:
            values[field.attname] = None if field.null else f"bench-synthetic-{seed}-{n}"
    values.update(
        title=f"synthetic {n}",
        category=f"synthetic-{n % 10}",
        original_name=f"synthetic-{n}.jpg",
        sha256=hashlib.sha256(f"bench-synthetic-{seed}-{n}".encode()).hexdigest(),
        status=model.Status.INDEXED,
        indexed_at=base["indexed_at"],
    )
    return values
