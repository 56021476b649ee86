"""How values travel to PostgreSQL: pgvector's `vector` and `bit(256)` as text literals, and
rows in binary COPY form (for bulk loads)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

from .compact import Projection


def literal(vector: np.ndarray) -> str:
    return "[" + ",".join(f"{x:.7g}" for x in np.asarray(vector, dtype=np.float32).ravel()) + "]"


def _code_bytes(code: bytes | np.ndarray) -> bytes:
    return (
        bytes(code)
        if isinstance(code, bytes | bytearray | memoryview)
        else np.asarray(code, np.uint8).tobytes()
    )


def bit_string(code: bytes | np.ndarray) -> str:
    return "".join(f"{b:08b}" for b in _code_bytes(code))


# PostgreSQL's binary COPY stream: a signature, then per row a field count and, per field, its
# length (-1: NULL) and value, big-endian; the values as each type's binary form (pgvector's
# `vector`: its dimension, a reserved 0, the floats; `bit`: its length in bits, the bytes).
COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)


def _binary_vector(vector: np.ndarray) -> bytes:
    values = np.asarray(vector, dtype=">f4").ravel()
    return struct.pack(">ihh", 4 + 4 * len(values), len(values), 0) + values.tobytes()


def binary_rows(
    model: str, rows: Sequence[tuple[int, np.ndarray, bytes | None]], projection: Projection | None = None
) -> bytes:
    """Rows of (model, image id, vector, hash or None, compact vector or None) in binary COPY
    form (formatting a vector's 1,472 numbers as text cost about a millisecond a row)."""
    name = model.encode()
    head = struct.pack(">hi", 5, len(name)) + name
    compact = projection.apply(np.stack([v for _, v, _ in rows])) if projection is not None and rows else None
    parts = []
    for n, (label, vector, pdq) in enumerate(rows):
        parts.append(head + struct.pack(">iq", 8, int(label)) + _binary_vector(vector))
        if pdq is None:
            parts.append(struct.pack(">i", -1))
        else:
            code = _code_bytes(pdq)
            parts.append(struct.pack(">ii", 4 + len(code), 8 * len(code)) + code)
        parts.append(struct.pack(">i", -1) if compact is None else _binary_vector(compact[n]))
    return b"".join(parts)


def parse(text: str) -> np.ndarray:
    return np.array(text.strip("[]").split(","), dtype=np.float32)
