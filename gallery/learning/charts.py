"""Small PNG pictures drawn with Pillow (no plotting library): the loss curve of a training
run and the near-neighbour class confusion matrix of an evaluation."""

from pathlib import Path

from PIL import Image, ImageDraw

WHITE, INK, GRID, LINE = (255, 255, 255), (40, 40, 40), (225, 225, 225), (37, 99, 235)


def loss_curve(history: list[list[float]], path: Path, *, title: str = "training loss") -> Path:
    """`history`: [seconds, epoch, loss] rows; x = epoch."""
    w, h, left, bottom, top, right = 640, 320, 60, 40, 30, 20
    im = Image.new("RGB", (w, h), WHITE)
    d = ImageDraw.Draw(im)
    d.text((left, 8), title, fill=INK)
    pts = [(float(r[1]), float(r[2])) for r in history if r[2] is not None]
    if len(pts) >= 2:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts) or 1.0
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        y1 = y1 if y1 > y0 else y0 + 1e-6

        def xy(x: float, y: float) -> tuple[float, float]:
            return (
                left + (x - x0) / max(x1 - x0, 1e-9) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
            )

        for i in range(5):
            y = y0 + (y1 - y0) * i / 4
            d.line([xy(x0, y), xy(x1, y)], fill=GRID)
            d.text((4, xy(x0, y)[1] - 6), f"{y:.4g}", fill=INK)
        d.line([xy(*p) for p in pts], fill=LINE, width=2)
        d.text((left, h - bottom + 8), f"epoch {x0:.2f}", fill=INK)
        d.text((w - right - 90, h - bottom + 8), f"epoch {x1:.2f}", fill=INK)
    else:
        d.text((left, h // 2), "not enough points yet", fill=INK)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def confusion_matrix(matrix: list[list[int]], classes: list[str], path: Path, *, title: str = "") -> Path:
    """Rows: query class; columns: class of the 10 nearest neighbours; cells: row share."""
    n = len(matrix)
    cell, label_w, top = 44, 90, 110
    im = Image.new("RGB", (label_w + n * cell + 10, top + n * cell + 10), WHITE)
    d = ImageDraw.Draw(im)
    d.text((6, 6), title or "near-neighbour class confusion (rows: query class)", fill=INK)
    for j, name in enumerate(classes):
        d.text((label_w + j * cell + 2, top - 16 - (j % 2) * 12), name[:8], fill=INK)
    for i, row in enumerate(matrix):
        total = max(1, sum(row))
        d.text((4, top + i * cell + cell // 2 - 6), classes[i][:12] if i < len(classes) else str(i), fill=INK)
        for j, count in enumerate(row):
            share = count / total
            shade = int(255 - 215 * share)
            box = [label_w + j * cell, top + i * cell, label_w + (j + 1) * cell - 1, top + (i + 1) * cell - 1]
            d.rectangle(box, fill=(shade, shade, 255))
            d.text((box[0] + 6, box[1] + cell // 2 - 6), f"{share:.2f}", fill=WHITE if share > 0.5 else INK)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path
