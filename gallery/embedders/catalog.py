"""Names and vector sizes of the embedders, importable without torch: the index writer and
the beat need only these, and should not carry a copy of PyTorch in memory."""

# torchvision backbone -> (builder name, feature dimension)
TORCHVISION_BACKBONES = {
    "resnet18": ("resnet18", 512),
    "resnet50": ("resnet50", 2048),
    "vgg16": ("vgg16", 512),
    "mobilenet_v3_large": ("mobilenet_v3_large", 960),
    "efficientnet_b0": ("efficientnet_b0", 1280),
}

LITE0_MID_STAGE = 5
LITE0_DIM = 1280 + 192  # last feature map + stage-5 output


def lite0_model_name(image_size: int) -> str:
    return f"efficientnet_lite0-ms{LITE0_MID_STAGE}-3view-{image_size}"
