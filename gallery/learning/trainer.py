"""The training loop: a time budget, progress reports, checkpoints, resume, cancel.

Frozen backbone stages are run once per image (and per augmented view) and their output is
kept (`prepare`); each step then runs only the part that learns, which is what makes
fine-tuning fit in minutes on two CPU cores. The learning rate follows a cosine over the
time budget (or the epochs, when given), so a run ends annealed whenever it is cut.

Checkpoints (every `checkpoint_seconds` and at the end) hold the network, the optimiser, the
step and the time spent; `run()` continues from the last one, so a run killed by a restart
resumes where it was. The finished model is `model.pt`: {"spec", "state_dict", "metrics"}."""

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.nn import functional as F

from . import losses
from .data import LabelledImages
from .networks import build_network

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
FEATURES_FILE = "features.pt"

DEFAULTS = {
    "metric": {
        "arch": "lite0",
        "frozen_stages": 5,
        "image_size": 128,
        "dim": 128,
        "temperature": 0.2,
        "proxy_weight": 1.0,
        # The pretrained stages learn at the head's rate. 8-minute runs on CIFAR-10 (mAP@1000):
        # 0.845 with lr 1e-3 and a third of it for those stages, 0.873 with all at 1e-3, 0.878
        # with all at 2e-3.
        "lr": 2e-3,
        "tail_lr_scale": 1.0,
    },
    "triplet": {
        "arch": "lite0",
        "frozen_stages": 5,
        "image_size": 128,
        "dim": 128,
        "margin": 0.2,
        "proxy_weight": 0.0,
        "lr": 1e-3,
        "tail_lr_scale": 0.3,
    },
    "contrastive": {
        "arch": "lite0",
        "frozen_stages": 5,
        "image_size": 128,
        "dim": 128,
        "temperature": 0.2,
        "lr": 1e-3,
        "tail_lr_scale": 0.3,
    },
    "autoencoder": {"image_size": 32, "dim": 32, "width": 64, "noise": 0.0},
}
COMMON = {"batch_size": 128, "lr": 5e-4, "weight_decay": 1e-4, "views": 1}
KINDS = tuple(DEFAULTS)


class Cancelled(Exception):
    pass


def make_spec(kind: str, **overrides) -> dict:
    if kind not in DEFAULTS:
        raise ValueError(f"Unknown kind {kind!r}: one of {', '.join(KINDS)}")
    spec = {"kind": kind, **COMMON, **DEFAULTS[kind]}
    if kind == "contrastive":
        spec["views"] = 2
    spec.update({k: v for k, v in overrides.items() if v is not None})
    if spec.get("bits") and kind == "autoencoder":
        raise ValueError("Hash codes are learned by the metric, triplet and contrastive kinds")
    return spec


def pixels(im: Image.Image, size: int) -> np.ndarray:
    """HxWx3 uint8 at the network's input size; the whole picture, squashed (as the embedders)."""
    return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_tensor(batch: np.ndarray, spec: dict) -> torch.Tensor:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    if spec["kind"] == "autoencoder":
        return x - 0.5  # the reference pipeline's pixel scale: [-0.5, 0.5]
    return (x - 0.5) / 0.5  # EfficientNet-Lite's normalisation


def augment(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random view: crop 50-100 % of the area, mirror, brightness/contrast/colour +-30 %."""
    w, h = im.size
    area = rng.uniform(0.5, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, max(1, round(math.sqrt(area * ratio) * w)))
    ch = min(h, max(1, round(math.sqrt(area / ratio) * h)))
    left, top = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
    im = im.crop((left, top, left + cw, top + ch))
    if rng.random() < 0.5:
        im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhancer(im).enhance(rng.uniform(0.7, 1.3))
    return im


@dataclass
class Progress:
    stage: str  # preparing | training | done
    done: int
    total: int
    epoch: float = 0.0
    step: int = 0
    loss: float | None = None
    elapsed: float = 0.0
    eta_seconds: float | None = None

    def as_dict(self) -> dict:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class Trainer:
    def __init__(
        self,
        spec: dict,
        data: LabelledImages,
        workdir: str | Path,
        *,
        minutes: float = 10.0,
        epochs: float | None = None,
        report=None,
        should_stop=None,
        checkpoint_seconds: float = 60.0,
        seed: int = 0,
    ):
        self.spec = dict(spec)
        self.data = data
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.budget = minutes * 60.0
        self.epochs = epochs
        self.report = report or (lambda progress: None)
        self.should_stop = should_stop or (lambda: False)
        self.checkpoint_seconds = checkpoint_seconds
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        kind = spec["kind"]
        if kind in ("metric", "triplet"):
            if (data.labels < 0).all() or len(set(data.labels[data.labels >= 0].tolist())) < 2:
                raise ValueError(f"{kind} learning needs images of at least two categories")
        if spec.get("max_images") and len(data) > int(spec["max_images"]):  # train on a random sample
            data = data.subset(np.sort(self.rng.choice(len(data), int(spec["max_images"]), replace=False)))
            self.data = data
        self.spec["classes"] = data.classes
        self.net = build_network(self.spec)
        self.prepare_seconds = 0.0
        self.cached = kind != "autoencoder" and not isinstance(
            getattr(self.net, "trunk", None), torch.nn.Identity
        )

    # ---------------------------------------------------------------- inputs
    def _view(self, im: Image.Image, view: int) -> Image.Image:
        return im if view == 0 and self.spec["kind"] != "contrastive" else augment(im, self.rng)

    def prepare(self) -> torch.Tensor:
        """Inputs for every image and view: the frozen trunk's output (fp16), else pixels."""
        path = self.workdir / FEATURES_FILE
        if path.exists():
            timing = self.workdir / "prepare.json"
            self.prepare_seconds = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
            return torch.load(path, weights_only=True)
        n, views, size = len(self.data), int(self.spec["views"]), int(self.spec["image_size"])
        chunk = 64
        store = None
        started = time.monotonic()
        for start in range(0, n, chunk):
            if self.should_stop():
                raise Cancelled()
            idx = range(start, min(n, start + chunk))
            images = [self.data.open(i) for i in idx]
            for v in range(views):
                batch = np.stack([pixels(self._view(im, v), size) for im in images])
                if self.cached:
                    out = self.net.trunk_features(to_tensor(batch, self.spec)).half()
                else:
                    out = torch.from_numpy(batch)
                if store is None:
                    store = torch.empty((views, n, *out.shape[1:]), dtype=out.dtype)
                store[v, start : start + len(batch)] = out
            done = min(n, start + chunk)
            rate = done / max(1e-6, time.monotonic() - started)
            spent = time.monotonic() - started
            eta = max(self.budget - spent, (n - done) / rate + 0.2 * self.budget)
            self.report(Progress("preparing", done, n, elapsed=spent, eta_seconds=eta))
        torch.save(store, path)
        self.prepare_seconds = time.monotonic() - started
        (self.workdir / "prepare.json").write_text(json.dumps({"seconds": round(self.prepare_seconds, 1)}))
        return store

    def _inputs(self, store: torch.Tensor, view: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        x = store[torch.from_numpy(view), torch.from_numpy(idx)]
        flip = torch.from_numpy(self.rng.random(len(idx)) < 0.5)
        if self.cached:
            x = x.float()
        else:
            x = to_tensor(x.numpy(), self.spec)
            if self.spec["kind"] != "autoencoder":
                x = _random_shift(x, self.rng)
        x[flip] = x[flip].flip(-1)  # mirror (on feature maps: the mirrored image, nearly)
        return x

    # ---------------------------------------------------------------- steps
    def _batch(self, store, by_class):
        n = store.shape[1]
        b = min(int(self.spec["batch_size"]), n)
        views = store.shape[0]
        kind = self.spec["kind"]
        if kind == "autoencoder":
            idx = self.rng.integers(0, n, b)
            return (self._inputs(store, np.zeros(b, dtype=np.int64), idx),), None
        if kind == "contrastive":
            idx = self.rng.choice(n, b, replace=False)
            va = self.rng.integers(0, views, b)
            vb = (va + 1 + self.rng.integers(0, max(1, views - 1), b)) % views if views > 1 else va
            return (self._inputs(store, va, idx), self._inputs(store, vb, idx)), None
        labelled = self.labelled
        anchors = labelled[self.rng.integers(0, len(labelled), b)]
        labels = self.data.labels[anchors]
        positives = np.array([by_class[c][self.rng.integers(0, len(by_class[c]))] for c in labels])
        va, vb = self.rng.integers(0, views, b), self.rng.integers(0, views, b)
        x = (self._inputs(store, va, anchors), self._inputs(store, vb, positives))
        return x, torch.from_numpy(labels)

    def _loss(self, x, labels) -> torch.Tensor:
        kind, spec, net = self.spec["kind"], self.spec, self.net
        if kind == "autoencoder":
            (clean,) = x
            noisy = clean + spec["noise"] * torch.randn_like(clean) if spec["noise"] else clean
            return F.mse_loss(net.decode(net.encode(noisy)), clean)
        both = torch.cat(x)
        if net.bits:
            h = net.latent(both)
            emb = F.normalize(2 * h - 1, dim=1)
            extra = 0.1 * losses.binarisation(h)
        else:
            emb, extra = F.normalize(net.latent(both), dim=1), 0.0
        a, p = emb.chunk(2)
        if net.proxies is not None:
            extra = extra + spec["proxy_weight"] * losses.proxy_softmax(
                emb, torch.cat([labels, labels]), net.proxies, spec.get("temperature", 0.2)
            )
        if kind == "metric":
            return losses.pair_softmax(a, p, labels, spec["temperature"]) + extra
        if kind == "triplet":
            return losses.triplet_batch_hard(a, p, labels, spec["margin"]) + extra
        z1, z2 = net.projector(a), net.projector(p)
        return losses.nt_xent(z1, z2, spec["temperature"]) + extra

    # ---------------------------------------------------------------- loop
    def run(self) -> dict:
        store = self.prepare()
        # The budget covers the whole run: what preparing took is not left for training
        # (but a run always trains for at least a fifth of it).
        self.train_budget = max(self.budget - self.prepare_seconds, 0.2 * self.budget)
        self.labelled = np.flatnonzero(self.data.labels >= 0)
        by_class = {
            int(c): np.flatnonzero(self.data.labels == c) for c in np.unique(self.data.labels[self.labelled])
        }
        tail = {id(p) for p in self.net.tail.parameters()} if hasattr(self.net, "tail") else set()
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for p in trainable if id(p) in tail],
                "scale": float(self.spec.get("tail_lr_scale", 1.0)),
            },
            {"params": [p for p in trainable if id(p) not in tail], "scale": 1.0},
        ]
        optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=self.spec["lr"], weight_decay=self.spec["weight_decay"]
        )
        state = {"step": 0, "elapsed": 0.0, "history": []}
        ckpt = self.workdir / CHECKPOINT_FILE
        if ckpt.exists():
            saved = torch.load(ckpt, weights_only=False)
            self.net.load_state_dict(saved["net"])
            optimizer.load_state_dict(saved["optimizer"])
            state = saved["state"]
            self.rng = np.random.default_rng(state["step"] + 1)
        n = store.shape[1]
        steps_per_epoch = max(1, math.ceil(n / int(self.spec["batch_size"])))
        total_steps = math.ceil(self.epochs * steps_per_epoch) if self.epochs else None
        self.net.train()
        session_start = time.monotonic() - state["elapsed"]
        last_save = time.monotonic()
        running = None
        while True:
            elapsed = time.monotonic() - session_start
            fraction = elapsed / self.train_budget if self.train_budget else 0.0
            if total_steps:
                fraction = max(fraction, state["step"] / total_steps)
            if fraction >= 1.0:
                break
            if self.should_stop():
                state["elapsed"] = elapsed
                self._checkpoint(ckpt, optimizer, state)
                raise Cancelled()
            warmup = min(1.0, (state["step"] + 1) / 50)
            lr = self.spec["lr"] * warmup * 0.5 * (1 + math.cos(math.pi * fraction))
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("scale", 1.0)
            x, labels = self._batch(store, by_class)
            loss = self._loss(x, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            value = loss.item()
            running = value if running is None else 0.95 * running + 0.05 * value
            if state["step"] % 10 == 0 or state["step"] == 1:
                epoch = state["step"] / steps_per_epoch
                state["history"].append([round(elapsed, 1), round(epoch, 3), round(running, 5)])
                eta = self.train_budget - elapsed
                if total_steps:
                    rate = state["step"] / max(elapsed, 1e-6)
                    eta = min(eta, (total_steps - state["step"]) / rate)
                self.report(
                    Progress(
                        "training",
                        state["step"],
                        total_steps or 0,
                        epoch,
                        state["step"],
                        running,
                        elapsed,
                        eta,
                    )
                )
            if time.monotonic() - last_save > self.checkpoint_seconds:
                state["elapsed"] = time.monotonic() - session_start
                self._checkpoint(ckpt, optimizer, state)
                last_save = time.monotonic()
        state["elapsed"] = time.monotonic() - session_start
        self._checkpoint(ckpt, optimizer, state)
        self.net.eval()
        result = {
            "steps": state["step"],
            "epochs": round(state["step"] / steps_per_epoch, 3),
            "train_seconds": round(state["elapsed"], 1),
            "prepare_seconds": round(self.prepare_seconds, 1),
            "final_loss": round(running, 5) if running is not None else None,
            "images": n,
        }
        if self.spec["kind"] == "autoencoder":
            every = max(1, n // 10_000)  # a spread sample: the whole set would add minutes
            result["train_mse"] = round(reconstruction_mse(self.net, store[0][::every]), 5)
        save_model(self.workdir / MODEL_FILE, self.net, self.spec, result)
        (self.workdir / "history.json").write_text(json.dumps(state["history"]))
        self.report(Progress("done", n, n, result["epochs"], state["step"], running, state["elapsed"], 0))
        return {**result, "history": state["history"]}

    def _checkpoint(self, path: Path, optimizer, state: dict) -> None:
        tmp = path.with_suffix(".tmp")
        torch.save({"net": self.net.state_dict(), "optimizer": optimizer.state_dict(), "state": state}, tmp)
        tmp.replace(path)
        (self.workdir / "history.json").write_text(json.dumps(state["history"]))  # the live loss curve


def _random_shift(x: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflect padding, then a random crop)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = rng.integers(0, 2 * pad + 1, 2)
    return padded[..., dy : dy + h, dx : dx + w]


@torch.no_grad()
def reconstruction_mse(net, pixels_uint8: torch.Tensor, batch: int = 500) -> float:
    """Mean squared error per pixel and channel, pixels in [-0.5, 0.5]."""
    net.eval()
    total, count = 0.0, 0
    for start in range(0, len(pixels_uint8), batch):
        x = to_tensor(pixels_uint8[start : start + batch].numpy(), net.spec)
        total += float(F.mse_loss(net.decode(net.encode(x)), x, reduction="sum"))
        count += x.numel()
    return total / count


def save_model(path: Path, net, spec: dict, metrics: dict) -> None:
    state = {k: v for k, v in net.state_dict().items() if not k.startswith(("projector.", "proxies"))}
    tmp = path.with_suffix(".tmp")
    torch.save({"spec": spec, "state_dict": state, "metrics": metrics}, tmp)
    tmp.replace(path)


def load_model(path: str | Path):
    saved = torch.load(path, map_location="cpu", weights_only=False)
    spec = saved["spec"]
    net = build_network({**spec, "kind": spec["kind"]}, pretrained=False)
    if getattr(net, "projector", None) is not None:
        net.projector = None
    if getattr(net, "proxies", None) is not None:
        net.proxies = None
    net.load_state_dict(saved["state_dict"])
    return net.eval()
