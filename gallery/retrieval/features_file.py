"""A catalogue photo's local features (`verify.item_features`) as the bytes of a file, so that
they are computed once, when the photo is stored, not by every process that verifies it: a
query whose photo is not in the catalogue verifies 30-40 candidates, and computing their
features was about 240 ms of it (ORB 5.7 ms, SIFT 34 ms a photo; reading them back 0.1 ms).

The layout is fixed and versioned (`VERSION`, also part of the stored name): a header of
little-endian numbers, then the points (float32, n x 2) and the descriptors (uint8, n x the
detector's width). The grey picture the pixel check lays over the query is not kept (most
candidates never need it): `decode` takes a callable that opens the photo when it does."""

from __future__ import annotations

import struct
from collections.abc import Callable

import numpy as np
from PIL import Image

from .verify import Detector, Features

VERSION = 1  # bump when the detectors' settings or the item sides change: old files are ignored
_MAGIC = b"GFEA"
# magic, version, detector key (4 bytes), width, height, scale, points, descriptor bytes each
_HEADER = struct.Struct("<4sH4sIIdII")
_DESCRIPTOR_BYTES = {Detector.ORB: 32, Detector.SIFT: 128}


def stored_name(file_name: str, detector: Detector) -> str:
    """Where an item's features are kept, beside its photo in the media storage."""
    return f"features/v{VERSION}/{detector.key}/{file_name}.bin"


def encode(features: Features) -> bytes:
    """`features` (an item's, as `verify.item_features` makes them) as bytes."""
    width = _DESCRIPTOR_BYTES[features.detector]
    descriptors = features.descriptors
    if descriptors is None:
        descriptors = np.zeros((0, width), np.uint8)
    if descriptors.dtype != np.uint8 or descriptors.shape[1:] != (width,):
        raise ValueError("an item's descriptors are kept as uint8 rows")
    points = np.ascontiguousarray(features.points, dtype="<f4")
    header = _HEADER.pack(
        _MAGIC,
        VERSION,
        features.detector.key.encode().ljust(4),
        features.size[0],
        features.size[1],
        features.scale,
        len(points),
        len(descriptors) * width,
    )
    return header + points.tobytes() + np.ascontiguousarray(descriptors).tobytes()


def decode(data: bytes, detector: Detector, photo: Callable[[], Image.Image | None]) -> Features | None:
    """The features `encode` wrote, or None when the bytes are not such a file (another
    version, another detector, cut short). `photo` opens the item's photo when the pixel
    check needs its grey picture."""
    if len(data) < _HEADER.size:
        return None
    magic, version, key, width, height, scale, count, size = _HEADER.unpack_from(data)
    row = _DESCRIPTOR_BYTES[detector]
    if (magic, version, key.rstrip()) != (_MAGIC, VERSION, detector.key.encode()) or size not in (
        0,
        count * row,
    ):
        return None
    start = _HEADER.size
    if len(data) != start + count * 8 + size:
        return None
    points = np.frombuffer(data, "<f4", count * 2, start).reshape(-1, 2).astype(np.float32)
    descriptors = (
        np.frombuffer(data, np.uint8, size, start + count * 8).reshape(-1, row).copy() if size else None
    )
    return Features(detector, points, descriptors, (width, height), scale, loader=photo)
