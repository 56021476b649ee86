"""A model's compact-vector projection in PostgreSQL (`gallery_vector_projection`), where every
process of every machine reads it: one row per model, `active` once searches use it.

A projection is stored active by a bulk load (the model's rows and HNSW index are made with it),
or pending by a served model's move to compact vectors (`services.index_compact`): the writer
then projects every row it writes, the rows written before are filled in, the compact HNSW
index is built beside the full one, and only then is the projection made active (searches
switch to it, the full index is dropped)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from django.db import connection
from django.db.backends.utils import CursorWrapper

from .compact import Projection

PROJECTIONS = "gallery_vector_projection"


@dataclass(frozen=True)
class StoredProjection:
    projection: Projection
    digest: str
    active: bool


def create_table(cursor: CursorWrapper) -> None:
    cursor.execute(
        f"""CREATE TABLE IF NOT EXISTS {PROJECTIONS} (
            model_name varchar(100) PRIMARY KEY,
            digest varchar(16) NOT NULL,
            active boolean NOT NULL,
            mean bytea NOT NULL,
            matrix bytea NOT NULL
        )"""
    )


def digest_of(projection: Projection) -> str:
    return hashlib.sha1(projection.mean.tobytes() + projection.matrix.tobytes()).hexdigest()[:16]


def stored_state(model: str) -> tuple[str, bool] | None:
    """(digest, active) of the model's projection, or None (a cheap look for a change)."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT digest, active FROM {PROJECTIONS} WHERE model_name = %s", [model])
        row = cursor.fetchone()
    return (str(row[0]), bool(row[1])) if row else None


def stored(model: str) -> StoredProjection | None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT digest, active, mean, matrix FROM {PROJECTIONS} WHERE model_name = %s", [model]
        )
        row = cursor.fetchone()
    if row is None:
        return None
    mean = np.frombuffer(bytes(row[2]), dtype=np.float32).copy()
    matrix = np.frombuffer(bytes(row[3]), dtype=np.float32).copy().reshape(len(mean), -1)
    return StoredProjection(Projection(mean, matrix), str(row[0]), bool(row[1]))


def store(model: str, projection: Projection | None, *, active: bool) -> None:
    """Replace the model's projection (None: it has none)."""
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {PROJECTIONS} WHERE model_name = %s", [model])
        if projection is None:
            return
        cursor.execute(
            f"INSERT INTO {PROJECTIONS} (model_name, digest, active, mean, matrix) VALUES (%s, %s, %s, %s, %s)",
            [
                model,
                digest_of(projection),
                active,
                np.ascontiguousarray(projection.mean, np.float32).tobytes(),
                np.ascontiguousarray(projection.matrix, np.float32).tobytes(),
            ],
        )


def activate(model: str, digest: str) -> bool:
    """Make the pending projection `digest` the one searches use; False if it is not there."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {PROJECTIONS} SET active = true WHERE model_name = %s AND digest = %s", [model, digest]
        )
        return bool(cursor.rowcount)
