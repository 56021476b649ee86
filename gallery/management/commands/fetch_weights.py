"""Download the ImageNet weights of the torchvision backbones into EMBEDDER_WEIGHTS_DIR, where
the embedders look first (`<name>.pth`). Needs the network; on a machine without it, copy the
files there by hand (the error names the URL and the target path).

    manage.py fetch_weights resnet18 vgg16
    manage.py fetch_weights --all"""

import os
import socket
import urllib.error
from argparse import ArgumentParser
from pathlib import Path
from typing import Any

import torch
import torchvision
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from gallery.embedders.registry import TORCHVISION_BACKBONES


class Command(BaseCommand):
    help = "Download torchvision backbone weights (ResNet, VGG16, MobileNetV3, EfficientNet-B0)."

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument("backbones", nargs="*", help=", ".join(TORCHVISION_BACKBONES))
        parser.add_argument("--all", action="store_true")
        parser.add_argument("--timeout", type=float, default=30.0)

    def handle(self, *args: Any, **options: Any) -> None:
        names = list(TORCHVISION_BACKBONES) if options["all"] else options["backbones"]
        unknown = [n for n in names if n not in TORCHVISION_BACKBONES]
        if not names or unknown:
            raise CommandError(
                f"Name backbones among {', '.join(TORCHVISION_BACKBONES)} (or --all); not: {unknown}"
            )
        target_dir = Path(settings.EMBEDDER_WEIGHTS_DIR)
        target_dir.mkdir(parents=True, exist_ok=True)
        socket.setdefaulttimeout(options["timeout"])
        failed = []
        for name in names:
            arch = TORCHVISION_BACKBONES[name][0]
            url = torchvision.models.get_model_weights(arch).DEFAULT.url
            target = target_dir / f"{arch}.pth"
            if target.is_file():
                self.stdout.write(f"{name}: already at {target}")
                continue
            tmp = target.with_suffix(".part")
            try:
                torch.hub.download_url_to_file(url, str(tmp), progress=False)
                torch.load(tmp, map_location="cpu", weights_only=True)  # a complete state dict
                os.replace(tmp, target)
                self.stdout.write(self.style.SUCCESS(f"{name}: {target}"))
            except (urllib.error.URLError, OSError, RuntimeError) as exc:
                tmp.unlink(missing_ok=True)
                failed.append(f"{name}: could not download {url} ({exc}); copy that file to {target}")
        if failed:
            raise CommandError("\n".join(failed))
