"""The retrieval pipeline's parameters as one typed object (like Chroma's `hnsw_params`),
read from settings once per process."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache

from django.conf import settings

from .tiers import CopyThresholds


@dataclass(frozen=True)
class RetrievalParams:
    copies: CopyThresholds = field(default_factory=CopyThresholds)
    # Query regions searched besides the whole picture: (share of each side, windows per side).
    # The 0.35 windows find an item that covers a tenth of a scene (at 0.5 and up: 2 of 15).
    grid: tuple[tuple[float, int], ...] = ((0.7, 2), (0.5, 3), (0.35, 4))
    candidates: int = 30  # neighbours taken from the copy index per query vector
    # Best candidates checked with local features when no copy is sure yet (bench/robust.py,
    # 528 queries: 10 -> 30 took recall@1 from 0.953 to 0.962, an occluded photo's original
    # is often 10th-30th; non-copy queries' p95 from 303 to 467 ms),
    verified: int = 30
    # SIFT (20 ms per catalogue photo's features, 4x ORB's) checks these best candidates, and
    # the others only where ORB found this many consistent matches: on 180 edited copies of
    # the tuning kinds (two seeds other than bench/robust.py's) the same copies were found,
    # and photos not in the catalogue took 534 ms at p50 instead of 657 (this machine, slow).
    sift_top: int = 5
    sift_orb_inliers: int = 6
    verified_per_object: int = 4  # ...and these more for each object on a plain background
    verified_first: int = 3  # ...these before the region search (a copy found stops it)
    verified_whole: int = 10  # ...then the whole picture's next ones, before the region search
    # Best candidates whose photos are screened for a close-up's pixels. A zoom on 40 % of each
    # side is far from its photo by the whole vector: of 58 (5,750-photo gallery, seeds other
    # than bench/robust.py's) 0.79 in its nearest 100, 0.91 in 250; once screened, its pixels
    # find it. 100 -> 250: zooms first 0.84 -> 0.90 (strong 0.73 -> 0.80), 560 edited copies of
    # the other kinds and the held-back products unchanged; screening costs 0.25 ms a photo.
    pixel_candidates: int = 250
    # Best candidates whose photos' content is compared with the picture's before any
    # verification (`retrieval.content`: a photo fitted into a larger canvas; ~1 ms each).
    content_checked: int = 10
    # ...and when one of them agrees this well in colour (not as a copy), not those of the
    # content framed as a catalogue photo (`search_content`).
    content_settled: float = 0.9
    pixel_region_candidates: int = 30  # ...and the regions' best candidates besides
    # ...of which the first are compared whole, under marks: stickers over 20 % of a photo move
    # its vector far (its item 50th-1,600th) while most of its pixels stay. 30 -> 250: on 80
    # stickered copies (seeds other than bench/robust.py's) first 0.75 -> 0.85 (strong 0.55 ->
    # 0.75), 340 copies of other kinds 1 more first, held-back products' labels unchanged.
    overlaid_candidates: int = 250
    pixel_checked: int = 10  # ...of which the best are searched fully (`retrieval.pixels`)
    pixel_nearest_checked: int = 3  # ...and the picture's nearest by its vector, however screened
    detail_candidates: int = 10  # items taken from the details index (nearest detail first)
    detail_verified: int = 2  # ...of which the first are checked with the first candidates
    sure_hash_distance: int = 16  # a copy found by its hash this close needs no region search
    sure_cosine: float = 0.85  # ...when its vector agrees this much
    regions_shown: int = 5  # suggested regions in an answer
    # With a learned model serving similarity, the copy model's closest look-alike still comes
    # first when its evidence (cosine, plus the nearest-hash bonus) reaches this.
    lead_cosine: float = 0.9
    # Queries are decoded (JPEG: drafted) to about this size: local features use 512 pixels,
    # region crops are embedded at 128, the hash at 128; more only costs decoding and resizing.
    query_side: int = 512


@cache
def retrieval_params() -> RetrievalParams:
    overrides = getattr(settings, "RETRIEVAL", {}) or {}
    copies = CopyThresholds(**overrides.get("copies", {}))
    return RetrievalParams(copies=copies, **{k: v for k, v in overrides.items() if k != "copies"})
