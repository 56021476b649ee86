"""Where in a query picture an item may be: region proposals, without detector weights.

- the content box: the picture without the plain margins around it (a product placed on a
  canvas, a letterboxed screenshot, a photo with a frame);
- separate objects on a plain background (a shop's listing page, a collage of photos): each
  one's outline, so every item on the page is searched on its own;
- a fixed multi-scale grid of overlapping windows (R-MAC's idea, with crops instead of pooled
  feature maps: on these small catalogue photos a crop embedded on its own matched 2-3x more
  often than the same window pooled from one larger feature map);
- a visitor's own box, when given, replaces the picture.

Measured on the robust protocol (6,000 product photos, default embedder): the grid alone took
an item pasted into a scene from 0.00 to 0.40 first, a reframed one from 0.00 to 0.58, a
screenshot from 0.13 to 0.80; saliency boxes from the CNN's own activations (SCDA) found the
item (IoU >= 0.5) in only 14-35 % of those pictures and added little. A third scale of 4x4
windows at 0.35 of each side took an item covering a tenth of a scene from 0.13 to 0.93 first
and a photo of a framed print from 0.73 to 1.00 (15 queries each, another seed than the
bench's), for about 150 ms more on those queries (16 more crops embedded; verified 10
candidates instead of 6)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from ..imaging import flatten


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels of a picture: left, top, width, height."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def whole(cls, image: Image.Image) -> Box:
        return cls(0, 0, image.width, image.height)

    @classmethod
    def parse(cls, text: str, image: Image.Image) -> Box:
        """`x,y,w,h` in pixels of `image`, clipped to it. Raises ValueError with words a
        person understands."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4:
            raise ValueError("The box must be four numbers: x,y,w,h (pixels of the uploaded image).")
        try:
            x, y, w, h = (round(float(p)) for p in parts)
        except ValueError:
            raise ValueError(
                "The box must be four numbers: x,y,w,h (pixels of the uploaded image)."
            ) from None
        if w <= 0 or h <= 0:
            raise ValueError("The box must have a positive width and height.")
        left, top = max(0, x), max(0, y)
        right, bottom = min(image.width, x + w), min(image.height, y + h)
        if right - left < 8 or bottom - top < 8:
            raise ValueError(
                f"The box must lie inside the image ({image.width}x{image.height} pixels) and be at least 8x8 pixels."
            )
        return cls(left, top, right - left, bottom - top)

    @property
    def area(self) -> int:
        return self.w * self.h

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]

    def crop(self, image: Image.Image) -> Image.Image:
        return image.crop((self.x, self.y, self.x + self.w, self.y + self.h))

    def overlap(self, other: Box) -> int:
        """The area the two boxes share."""
        ix = max(0, min(self.x + self.w, other.x + other.w) - max(self.x, other.x))
        iy = max(0, min(self.y + self.h, other.y + other.h) - max(self.y, other.y))
        return ix * iy

    def iou(self, other: Box) -> float:
        inter = self.overlap(other)
        return inter / float(self.area + other.area - inter) if inter else 0.0

    def covers(self, other: Box, share: float = 0.7) -> bool:
        """This box holds at least `share` of the other's area."""
        return self.overlap(other) >= share * other.area

    def clipped(self, image: Image.Image) -> Box | None:
        """This box clipped to the picture, or None when under 8 pixels a side there."""
        try:
            return Box.parse(",".join(str(v) for v in self.as_list()), image)
        except ValueError:
            return None

    def within(self, outer: Box) -> Box:
        """This box, given in pixels of `outer`'s crop, in pixels of the whole picture."""
        return Box(self.x + outer.x, self.y + outer.y, self.w, self.h)


def _off_border_colour(image: Image.Image, tolerance: int) -> tuple[np.ndarray, float]:
    """Where the picture (at most 256 pixels a side) differs from its border's colour (the
    median), and how many of its pixels one of those is a side."""
    distance, scale = _border_distance(image)
    return distance > tolerance, scale


def _border_distance(image: Image.Image) -> tuple[np.ndarray, float]:
    """How far each pixel of the picture (at most 256 pixels a side) is from its border's
    colour (the largest of its channels' differences), and how many of its pixels one of
    those is a side."""
    small = flatten(image)
    scale = max(1.0, max(small.size) / 256)
    if scale > 1:
        small = small.resize((max(1, round(small.width / scale)), max(1, round(small.height / scale))))
    pixels = np.asarray(small, dtype=np.int16)
    off = np.abs(pixels - _border_colour(pixels).astype(np.float32))
    # (channel by channel: numpy's max over a last axis of 3 is 10x slower)
    distance: np.ndarray = np.maximum(np.maximum(off[..., 0], off[..., 1]), off[..., 2])
    return distance, scale


def _border_colour(pixels: np.ndarray) -> np.ndarray:
    """The median colour of a picture's (h x w x 3) outermost rows and columns."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    colour: np.ndarray = np.median(border, axis=0)
    return colour


def content_box(
    image: Image.Image, *, tolerance: int = 18, min_share: float = 0.05, max_share: float = 0.85
) -> Box | None:
    """The picture without plain margins of the colour of its border, or None when there
    are none worth cutting (more than `max_share` of the picture left) or nothing but margin."""
    return content_boxes(image, (tolerance,), min_share=min_share, max_share=max_share)[0]


def content_boxes(
    image: Image.Image, tolerances: tuple[int, ...], *, min_share: float = 0.05, max_share: float = 0.85
) -> list[Box | None]:
    """`content_box` at each of `tolerances` (one look at the picture's pixels)."""
    distance, scale = _border_distance(image)
    return [
        _margins_cut(distance > tolerance, scale, image, min_share, max_share) for tolerance in tolerances
    ]


def _margins_cut(
    differs: np.ndarray, scale: float, image: Image.Image, min_share: float, max_share: float
) -> Box | None:
    rows, cols = np.flatnonzero(differs.any(axis=1)), np.flatnonzero(differs.any(axis=0))
    if not len(rows) or not len(cols):
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if (bottom - top) * (right - left) < min_share * differs.size:
        return None
    if (bottom - top) * (right - left) > max_share * differs.size:
        return None  # barely any margin: the whole picture already says it
    box = Box(
        round(left * scale), round(top * scale), round((right - left) * scale), round((bottom - top) * scale)
    )
    return box.clipped(image)


def main_band(image: Image.Image, *, tolerance: int = 18) -> Box | None:
    """The picture's content without what lies across a margin above or below it (a product
    photo on a shop's page, boxed with its caption and price: `object_boxes` joins parts
    close together): its largest band of rows that differ from the border's colour, between
    rows that do not; None when there is only one band."""
    differs, scale = _off_border_colour(image, tolerance)
    rows = differs.any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], rows.astype(np.int8), [0]])))
    bands = list(zip(edges[::2], edges[1::2]))  # [start, end) of each run of differing rows
    if len(bands) < 2:
        return None
    top, bottom = max(bands, key=lambda band: int(differs[band[0] : band[1]].sum()))
    band = np.zeros_like(differs)
    band[top:bottom] = differs[top:bottom]
    return _margins_cut(band, scale, image, 0.0, 1.0)


def with_margins(image: Image.Image, box: Box, share: float) -> Image.Image:
    """The box's part of the picture on plain margins of `share` of its sides, of the colour
    of the picture's border: framed as catalogue photos frame an item."""
    colour = tuple(int(v) for v in _border_colour(np.asarray(flatten(image), dtype=np.uint8)))
    dx, dy = round(box.w * share), round(box.h * share)
    framed = Image.new("RGB", (box.w + 2 * dx, box.h + 2 * dy), colour)
    framed.paste(box.crop(image).convert("RGB"), (dx, dy))
    return framed


def object_boxes(image: Image.Image, *, tolerance: int = 10) -> list[Box]:
    """Separate objects on a plain background (a product photo small in a page's screenshot,
    a shop's listing page, a collage of product photos, a flat lay on a table): the outlines
    of the picture's parts that differ from the colour of its border, parts close together
    joined (a pair of shoes is one object). Only object-like parts count: 1-60 % of the
    picture (6 % when cut by its edge), 40 pixels a side or more, not a line of text."""
    differs, scale = _off_border_colour(image, tolerance)
    reach = max(2, round(0.015 * min(differs.shape)))
    joined = cv2.dilate(differs.astype(np.uint8), np.ones((reach, reach), np.uint8))
    count, _, stats, _ = cv2.connectedComponentsWithStats(joined, connectivity=8)
    height, width = differs.shape
    boxes = []
    for x, y, w, h, area in stats[1:count]:
        share = w * h / float(width * height)
        cut = x == 0 or y == 0 or x + w == width or y + h == height  # by the picture's edge
        if cut and share < 0.06:
            continue  # a piece of something larger: a watermark's letters, a dark corner
        if 0.01 <= share <= 0.6 and max(w, h) <= 3.5 * min(w, h) and area >= 0.3 * w * h:
            box = Box(*(round(float(v) * scale) for v in (x, y, w, h)))
            inside = box.clipped(image)
            if inside is not None and min(inside.w, inside.h) >= 40:  # smaller: a letter, a logo
                boxes.append(inside)
    return boxes


def framed_boxes(image: Image.Image, *, limit: int = 2) -> list[Box]:
    """Pictures inside the picture: axis-aligned rectangles whose four sides are edges (a
    photo pasted into a scene or a post, a print on a wall, a screen), best outlined first.

    Rows and columns holding long edge runs are the candidate sides; every rectangle they
    make is scored by how much of each side is an edge (prefix sums, so all of them at once).
    Three sides must be 85 % edges and the fourth 40 %: a white product photo against a
    bright part of the scene has one side barely visible. The picture's own borders count as
    edges (a photo pasted against them). On 160 photos pasted into CIFAR-10 scenes at 30-60 %
    of the side (seeds other than bench/robust.py's) the first box had IoU >= 0.5 with the
    pasted photo in 0.93-0.97 of them; 0.33 boxes on a plain CIFAR-10 photo; 3 ms. Through
    the app (another seed) a strongly shrunk pasted photo was found first 0.80 -> 1.00."""
    grey = np.asarray(flatten(image).convert("L"))
    scale = max(1.0, max(grey.shape) / 384)
    if scale > 1:
        size = (round(grey.shape[1] / scale), round(grey.shape[0] / scale))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    height, width = grey.shape
    shortest = max(12, round(0.12 * min(height, width)))  # a side shorter than this is not a frame
    if min(height, width) < 2 * shortest:
        return []
    edges = cv2.Canny(grey, 30, 90)
    # A side may wander a pixel across (resampling, JPEG): edges thickened across the side.
    across_rows = cv2.dilate(edges, np.ones((3, 1), np.uint8)) > 0
    across_cols = cv2.dilate(edges, np.ones((1, 3), np.uint8)) > 0
    # Candidate sides: long runs, small gaps bridged; the picture's own borders too.
    row_runs = cv2.dilate(across_rows.astype(np.uint8), np.ones((1, 7), np.uint8)) > 0
    col_runs = cv2.dilate(across_cols.astype(np.uint8), np.ones((7, 1), np.uint8)) > 0
    rows = np.array(sorted({*_edge_lines(row_runs, shortest), 0, height - 1}))
    cols = np.array(sorted({*_edge_lines(col_runs.T, shortest), 0, width - 1}))
    across_rows[[0, height - 1], :] = True
    across_cols[:, [0, width - 1]] = True
    along_rows = np.concatenate([np.zeros((height, 1)), np.cumsum(across_rows, axis=1)], axis=1)
    along_cols = np.concatenate([np.zeros((1, width)), np.cumsum(across_cols, axis=0)], axis=0)
    y1, y2, x1, x2 = (a.ravel() for a in np.meshgrid(rows, rows, cols, cols, indexing="ij"))
    w, h = x2 - x1, y2 - y1
    share = w * h / float(width * height)
    keep = (w >= shortest) & (h >= shortest) & (share >= 0.03) & (share <= 0.85)
    keep &= np.maximum(w, h) <= 4 * np.minimum(w, h)
    y1, y2, x1, x2, w, h = y1[keep], y2[keep], x1[keep], x2[keep], w[keep], h[keep]
    sides = np.sort(
        np.stack(
            [
                (along_rows[y1, x2] - along_rows[y1, x1]) / w,
                (along_rows[y2, x2] - along_rows[y2, x1]) / w,
                (along_cols[y2, x1] - along_cols[y1, x1]) / h,
                (along_cols[y2, x2] - along_cols[y1, x2]) / h,
            ],
            axis=1,
        ),
        axis=1,
    )
    framed = np.flatnonzero((sides[:, 1] >= 0.85) & (sides[:, 0] >= 0.4))
    outlined = sides[framed, 1] + 0.25 * sides[framed, 0]
    boxes: list[Box] = []
    for i in framed[np.lexsort((-(w * h)[framed], -outlined))]:
        box = Box(*(round(float(v) * scale) for v in (x1[i], y1[i], w[i], h[i])))
        if all(box.iou(other) < 0.5 for other in boxes):
            boxes.append(box)
        if len(boxes) == limit:
            break
    return boxes


def _edge_lines(edges: np.ndarray, shortest: int, limit: int = 14) -> list[int]:
    """The rows of `edges` whose longest run is at least `shortest`, longest first, one per
    few rows (a side is a line, not a band), sorted."""
    run = np.zeros(edges.shape[0], np.int32)
    longest = np.zeros(edges.shape[0], np.int32)
    for column in edges.T.astype(np.int32):
        run = (run + 1) * column
        np.maximum(longest, run, out=longest)
    kept: list[int] = []
    for row in np.argsort(-longest, kind="stable"):
        if longest[row] < shortest or len(kept) == limit:
            break
        if all(abs(int(row) - k) > 3 for k in kept):
            kept.append(int(row))
    return kept


def grid(image: Image.Image, scales: tuple[tuple[float, int], ...]) -> list[Box]:
    """Overlapping windows: for each (share of each side, windows per side), evenly spread."""
    boxes = []
    for share, count in scales:
        w, h = max(8, round(image.width * share)), max(8, round(image.height * share))
        for i in range(count):
            for j in range(count):
                x = round((image.width - w) * i / (count - 1)) if count > 1 else (image.width - w) // 2
                y = round((image.height - h) * j / (count - 1)) if count > 1 else (image.height - h) // 2
                boxes.append(Box(x, y, w, h))
    return boxes


def proposals(image: Image.Image, *, scales: tuple[tuple[float, int], ...]) -> list[Box]:
    """The regions worth searching besides the whole picture: its content box (when it has
    margins), the pictures framed inside it, then the grid over the content."""
    content = content_box(image)
    area = content.crop(image) if content else image
    offset = content or Box.whole(image)
    boxes = [content] if content else []
    framed = [box.within(offset) for box in framed_boxes(area)]
    boxes += [box for box in framed if not content or box.iou(content) < 0.8]
    boxes += [box.within(offset) for box in grid(area, scales)]
    return boxes
