"""A trained model's file, `model.pt`: {"spec", "state_dict", "metrics"}. Written by the
trainer, read by the learned embedder (which needs neither the trainer nor the database)."""

import os
from pathlib import Path
from typing import Any

import torch

from .networks import EmbeddingNet, Network, build_network
from .spec import TrainingSpec

TRAINING_ONLY = ("projector.", "proxies")  # state the finished model does not need


def save_model(path: Path, net: Network, spec: TrainingSpec, metrics: dict[str, Any]) -> None:
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(TRAINING_ONLY)}
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": spec, "state_dict": state, "metrics": metrics}, tmp)
    tmp.replace(path)


def load_model(path: str | os.PathLike[str]) -> Network:
    saved = torch.load(path, map_location="cpu", weights_only=False)
    spec: TrainingSpec = saved["spec"]
    net = build_network(spec.copy(), pretrained=False)
    if isinstance(net, EmbeddingNet):  # the contrastive projection and class proxies: training only
        if net.projector is not None:
            net.projector = None
        if net.proxies is not None:
            net.proxies = None
    net.load_state_dict(saved["state_dict"])
    return net.eval()
