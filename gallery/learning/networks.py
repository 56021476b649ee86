"""The trainable networks.

- `EmbeddingNet`: a backbone split into a frozen part (`trunk`) and a trained part (`tail`),
  GeM pooling, a linear head to the embedding, L2 normalisation. With `bits`, the head is a
  sigmoid latent layer (Lin et al., CVPR 2015) whose outputs thresholded at 0.5 are the hash
  code; the float vector is the centred latent (2h - 1), normalised.
  Backbones: `lite0` (ImageNet EfficientNet-Lite0 from the PyPI package, a small mobile CNN:
  the first `frozen_stages` stages stay as they are, the rest learns) and `small_cnn` (four
  conv blocks from scratch, for tiny galleries and the tests).
- `ConvAutoencoder`: conv + pooling encoder to a small code, transposed-conv decoder (MSE).

Everything a network needs to be rebuilt is its `spec` (`spec.TrainingSpec`), saved with
the weights, so an embedder can load a model file without the database. Each network names
the input normalisation it expects (`normalisation`, for `transforms.to_tensor`)."""

import copy
from typing import Any, Self

import timm
import torch
from torch import nn
from torch.nn import functional as F

from ..embedders.efficientnet_lite import load_lite0_weights
from ..embedders.transforms import CENTRED, HALF, gem  # the preprocessing the embedders use
from .spec import LABELLED_KINDS, TrainingSpec

LITE0_STAGES = 7


def _lite0(pretrained: bool) -> Any:  # timm's EfficientNet (untyped)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    if pretrained:
        load_lite0_weights(model)
    return model


class SmallMapDepthwise(nn.Module):
    """A depthwise convolution computed as one small matrix per channel.

    On the 8x8 and 4x4 maps of the trained stages, PyTorch's CPU depthwise backward was the
    bulk of a training step (265 ms of a 1.7 s step for one 5x5 layer, about 2 GFLOP/s). On a
    map of H*W pixels the layer is, per channel, a fixed (outputs x inputs) matrix whose
    entries are kernel taps; a batched matmul computes it and its gradient at full speed.
    Same weight (same state-dict key), same results; the tap layout is read off the wrapped
    layer itself, so its padding rules ('same' padding included) hold as they are."""

    MAX_PIXELS = 64  # the matrix grows as (H*W)^2: only for small maps

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        self.weight = conv.weight
        self._probe = [copy.deepcopy(conv).requires_grad_(False)]  # a list: not a submodule
        self._taps: dict[tuple[int, int], tuple[torch.Tensor, tuple[int, int]]] = {}

    def _layout(self, h: int, w: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """(tap index per output x input pixel, with k*k = no tap; output size)."""
        key = (h, w)
        if key not in self._taps:
            probe = self._probe[0]
            k = probe.weight.shape[-1] * probe.weight.shape[-2]
            kernel = torch.zeros(k, 1, probe.weight.shape[-2], probe.weight.shape[-1])
            kernel.view(k, -1)[torch.arange(k), torch.arange(k)] = 1.0
            basis = torch.eye(h * w).view(h * w, 1, h, w).expand(h * w, k, h, w)
            with torch.no_grad():
                saved, probe.weight = probe.weight, nn.Parameter(kernel, requires_grad=False)
                probe.groups = k
                out = probe(basis.contiguous())  # (inputs, taps, ho, wo): 1 where a tap links them
                probe.weight, probe.groups = saved, saved.shape[0]
            ho, wo = out.shape[-2:]
            links = out.flatten(2).permute(2, 0, 1)  # (outputs, inputs, taps)
            index = torch.where(links.sum(-1) > 0.5, links.argmax(-1), torch.tensor(k))
            self._taps[key] = (index, (ho, wo))
        return self._taps[key]

    def _traced(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped layer's own forward (its padding rules: timm's 'same' convolutions pad
        in forward) with this weight, in a form a trace follows (the stateless API and the
        tap layout, computed by swapping the probe's weight, are not)."""
        probe = self._probe[0]
        saved = probe.weight
        probe.weight = self.weight
        try:
            out: torch.Tensor = probe(x)
        finally:
            probe.weight = saved
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if torch.jit.is_tracing():  # an ONNX export: the wrapped layer, as a plain convolution
            return self._traced(x)
        if h * w > self.MAX_PIXELS:  # the wrapped layer, with this (trained) weight
            return torch.func.functional_call(self._probe[0], {"weight": self.weight}, (x,))
        index, (ho, wo) = self._layout(h, w)
        taps = torch.cat([self.weight.reshape(c, -1), self.weight.new_zeros(c, 1)], dim=1)
        matrices = taps[:, index]  # (channels, outputs, inputs)
        out = torch.bmm(x.reshape(b, c, h * w).transpose(0, 1), matrices.transpose(1, 2))
        return out.transpose(0, 1).reshape(b, c, ho, wo)


def use_small_map_depthwise(module: nn.Module) -> nn.Module:
    """Swaps every depthwise convolution (without bias) of `module` for `SmallMapDepthwise`."""
    for name, child in module.named_children():
        if (
            isinstance(child, nn.Conv2d)
            and child.groups == child.in_channels == child.out_channels
            and child.bias is None
            and child.dilation == (1, 1)
        ):
            setattr(module, name, SmallMapDepthwise(child))
        else:
            use_small_map_depthwise(child)
    return module


def build_backbone(spec: TrainingSpec, *, pretrained: bool = True) -> tuple[nn.Module, nn.Module, int]:
    """(trunk, tail, channels of the tail's output). The trunk never learns."""
    arch = spec.get("arch", "lite0")
    if arch == "lite0":
        m = _lite0(pretrained)
        frozen = int(spec.get("frozen_stages", 4))
        if not 0 <= frozen <= LITE0_STAGES:
            raise ValueError(f"frozen_stages must be 0..{LITE0_STAGES}")
        stages = list(m.blocks)
        trunk = nn.Sequential(m.conv_stem, m.bn1, *stages[:frozen])
        tail = nn.Sequential(*stages[frozen:], m.conv_head, m.bn2)
        return trunk, tail, int(m.num_features)
    if arch == "small_cnn":
        width = int(spec.get("width", 32))

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        tail = nn.Sequential(
            block(3, width), block(width, 2 * width), block(2 * width, 4 * width), block(4 * width, 8 * width)
        )
        return nn.Identity(), tail, 8 * width
    raise ValueError(f"Unknown architecture {arch!r}")


class EmbeddingNet(nn.Module):
    normalisation = HALF  # EfficientNet-Lite's: [-1, 1]

    def __init__(self, spec: TrainingSpec, *, pretrained: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.trunk, self.tail, channels = build_backbone(spec, pretrained=pretrained)
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        use_small_map_depthwise(self.tail)  # CPU speed: a 1.4x faster training step here
        self.trunk.eval()  # frozen: its batch-norm layers keep their ImageNet statistics
        self.bits = int(spec.get("bits") or 0)
        self.dim = self.bits or int(spec.get("dim", 128))
        self.head = nn.Linear(channels, self.dim)
        # Class proxies for metric/triplet learning with categories (training only)
        classes = len(spec.get("classes") or [])
        self.proxies: nn.Parameter | None = (
            nn.Parameter(torch.randn(classes, self.dim) * 0.1)
            if spec.get("kind") in LABELLED_KINDS and spec.get("proxy_weight", 0) and classes
            else None
        )
        # SimCLR: the contrastive loss looks at a projection, the embedding is before it
        self.projector: nn.Sequential | None = (
            nn.Sequential(nn.Linear(self.dim, self.dim), nn.ReLU(inplace=True), nn.Linear(self.dim, self.dim))
            if spec.get("kind") == "contrastive"
            else None
        )

    def train(self, mode: bool = True) -> Self:
        super().train(mode)
        self.trunk.eval()  # frozen batch-norm statistics too
        return self

    def trunk_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part, always in inference mode: features cached before training must
        equal what the finished model computes (batch statistics would differ, and would
        overwrite the stored ones)."""
        self.trunk.eval()
        with torch.no_grad():
            out: torch.Tensor = self.trunk(x)
            return out

    def latent(self, trunk_out: torch.Tensor) -> torch.Tensor:
        """Before normalisation: the sigmoid activations with bits, else the linear head."""
        z = self.head(gem(self.tail(trunk_out)))
        return torch.sigmoid(z) if self.bits else z

    def embed_from_trunk(self, trunk_out: torch.Tensor) -> torch.Tensor:
        z = self.latent(trunk_out)
        if self.bits:
            z = 2 * z - 1
        return F.normalize(z, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed_from_trunk(self.trunk_features(x))


class ConvAutoencoder(nn.Module):
    """32x32 RGB in [-0.5, 0.5] -> code (`dim` floats) -> 32x32 reconstruction.

    Encoder: three conv blocks, each with 2x2 max pooling (32 -> 4), then a linear layer to the
    code; decoder: linear back to 4x4 maps and three stride-2 transposed convolutions."""

    normalisation = CENTRED  # the reference pipeline's pixel scale: [-0.5, 0.5]

    def __init__(self, spec: TrainingSpec) -> None:
        super().__init__()
        self.spec = spec
        self.dim = int(spec.get("dim", 32))
        self.noise = float(spec.get("noise", 0.0))  # denoising variant: Gaussian noise on input
        w = int(spec.get("width", 64))
        self.width = w

        def down(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.1, inplace=True),
                nn.MaxPool2d(2),
            )

        def up(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.1, inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.1, inplace=True),
            )

        self.encoder = nn.Sequential(down(3, w), down(w, 2 * w), down(2 * w, 4 * w))
        self.to_code = nn.Linear(4 * w * 16, self.dim)
        self.from_code = nn.Linear(self.dim, 4 * w * 16)
        self.decoder = nn.Sequential(up(4 * w, 2 * w), up(2 * w, w), up(w, w), nn.Conv2d(w, 3, 3, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_code(self.encoder(x).flatten(1))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        h = self.from_code(code).view(-1, 4 * self.width, 4, 4)
        return 0.5 * torch.tanh(self.decoder(F.leaky_relu(h, 0.1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.encode(x), dim=1)


Network = EmbeddingNet | ConvAutoencoder


def build_network(spec: TrainingSpec, *, pretrained: bool = True) -> Network:
    if spec["kind"] == "autoencoder":
        return ConvAutoencoder(spec)
    return EmbeddingNet(spec, pretrained=pretrained)
