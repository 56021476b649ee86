"""Pretrained torchvision backbones (ResNet, VGG16, MobileNetV3, EfficientNet) with global
average or GeM pooling. Weights come from a local file or the torch cache, never the network
at run time: `<weights_dir>/<name>.pth`, else the file torchvision would have downloaded in
`torch.hub.get_dir()/checkpoints/`."""

import os
from pathlib import Path

import torch
import torchvision

from .base import TorchEmbedder
from .registry import TORCHVISION_BACKBONES as BACKBONES
from .transforms import gem

PathLike = str | os.PathLike[str]


class WeightsNotFound(FileNotFoundError):
    pass


def weights_candidates(arch: str, weights_dir: PathLike | None) -> list[Path]:
    paths = []
    if weights_dir:
        paths.append(Path(weights_dir) / f"{arch}.pth")
    url = torchvision.models.get_model_weights(arch).DEFAULT.url
    paths.append(Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url))
    return paths


def load_state_dict(
    arch: str, weights_dir: PathLike | None, weights_path: PathLike | None = None
) -> dict[str, torch.Tensor]:
    candidates = [Path(weights_path)] if weights_path else weights_candidates(arch, weights_dir)
    for path in candidates:
        if path.is_file():
            state: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
            return state
    raise WeightsNotFound(
        f"No weights for {arch}: looked for {', '.join(str(p) for p in candidates)}. "
        "Copy the torchvision .pth file to one of these paths."
    )


class TorchvisionEmbedder(TorchEmbedder):
    def __init__(
        self,
        name: str,
        *,
        weights_dir: PathLike | None = None,
        weights_path: PathLike | None = None,
        pooling: str = "avg",
    ) -> None:
        self.arch, self.dim = BACKBONES[name]
        self.name = f"{name}-{pooling}"
        self.pooling = pooling
        self.weights_dir = weights_dir
        self.weights_path = weights_path
        super().__init__()

    def build_model(self) -> torch.nn.Module:
        model = torchvision.models.get_model(self.arch, weights=None)
        model.load_state_dict(load_state_dict(self.arch, self.weights_dir, self.weights_path))
        body: torch.nn.Module
        if self.arch.startswith("resnet"):
            body = torch.nn.Sequential(*list(model.children())[:-2])
        else:  # vgg, mobilenet, efficientnet all keep their convolutions in `.features`
            body = model.features
        return body

    def features(self, x: torch.Tensor) -> torch.Tensor:
        fmap = self.model(x)
        return gem(fmap) if self.pooling == "gem" else fmap.mean(dim=(-2, -1))
