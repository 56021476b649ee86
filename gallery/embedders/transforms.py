"""The one preprocessing of every network here, pretrained or trained: the whole picture on
white, squashed to a square (crops would lose the edges of products), as uint8 pixels; then
a float batch scaled to [0, 1] and normalised per channel. Also the GeM pooling both the
pretrained embedders and the trained networks use."""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageFilter

from ..imaging import flatten


@dataclass(frozen=True)
class Normalisation:
    """Per-channel (x - mean) / std, on pixels scaled to [0, 1]."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Normalisation((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's backbones
HALF = Normalisation((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # EfficientNet-Lite's: [-1, 1]
CENTRED = Normalisation((0.5, 0.5, 0.5), (1.0, 1.0, 1.0))  # the autoencoder's reference pipeline: [-0.5, 0.5]


def square(im: Image.Image, size: int, blur_radius: float = 0.0) -> Image.Image:
    """RGB on white, resized to size x size (bilinear), then blurred if asked."""
    im = flatten(im).resize((size, size), Image.Resampling.BILINEAR)
    if blur_radius:
        im = im.filter(ImageFilter.GaussianBlur(blur_radius))
    return im


def pixels(im: Image.Image, size: int, blur_radius: float = 0.0) -> np.ndarray:
    """HxWx3 uint8 at the network's input size (`square`)."""
    return np.asarray(square(im, size, blur_radius), dtype=np.uint8)


def _per_channel(values: tuple[float, float, float]) -> float | torch.Tensor:
    """A scalar when the channels agree, else a (1, 3, 1, 1) tensor."""
    if len(set(values)) == 1:
        return values[0]
    return torch.tensor(values, dtype=torch.float32).view(1, 3, 1, 1)


def to_tensor(batch: np.ndarray, norm: Normalisation) -> torch.Tensor:
    """NxHxWx3 uint8 -> Nx3xHxW float32, normalised. The result keeps the channels-last memory
    layout of the pixels (as the trained networks always saw it); `.contiguous()` gives NCHW."""
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    x = x - _per_channel(norm.mean)
    if norm.std != (1.0, 1.0, 1.0):
        x = x / _per_channel(norm.std)
    return x


def gem(x: torch.Tensor, p: float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised-mean pooling: between average (p=1) and max pooling."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)
