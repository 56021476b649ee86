"""The training loop: a time budget, progress reports, checkpoints, resume, cancel.

Frozen backbone stages are run once per image (and per augmented view) and their output is
kept (`prepare`); each step then runs only the part that learns, which is what makes
fine-tuning fit in minutes on two CPU cores. The learning rate follows a cosine over the
time budget (or the epochs, when given), so a run ends annealed whenever it is cut.

Checkpoints (every `checkpoint_seconds` and at the end) hold the network, the optimiser, the
step and the time spent; `run()` continues from the last one, so a run killed by a restart
resumes where it was. The finished model is `model.pt` (`model_io`)."""

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.nn import functional as F

from ..embedders.transforms import pixels, to_tensor
from . import losses
from .data import LabelledImages
from .model_io import save_model
from .networks import ConvAutoencoder, EmbeddingNet, build_network
from .spec import LABELLED_KINDS, TrainingSpec

MODEL_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
FEATURES_FILE = "features.pt"


class Cancelled(Exception):
    pass


def augment(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A random view: crop 50-100 % of the area, mirror, brightness/contrast/colour +-30 %."""
    w, h = im.size
    area = rng.uniform(0.5, 1.0)
    ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    cw = min(w, max(1, round(math.sqrt(area * ratio) * w)))
    ch = min(h, max(1, round(math.sqrt(area / ratio) * h)))
    left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
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

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


class RunState(TypedDict):
    """What a checkpoint keeps of the loop besides the network and the optimiser."""

    step: int
    elapsed: float  # seconds of training, over every session
    history: list[list[float]]  # [seconds, epoch, smoothed loss] every 10 steps


@dataclass
class _Run:
    """One session of the training loop."""

    optimizer: torch.optim.Optimizer
    state: RunState
    checkpoint: Path
    steps_per_epoch: int
    total_steps: int | None  # with `epochs`
    started: float  # monotonic time, moved back by the time earlier sessions trained
    last_save: float
    running: float | None = None  # the smoothed loss


Views = tuple[torch.Tensor, ...]


class Trainer:
    def __init__(
        self,
        spec: TrainingSpec,
        data: LabelledImages,
        workdir: str | Path,
        *,
        minutes: float = 10.0,
        epochs: float | None = None,
        report: Callable[[Progress], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        checkpoint_seconds: float = 60.0,
        seed: int = 0,
    ):
        self.spec: TrainingSpec = spec.copy()
        self.data = data
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.budget = minutes * 60.0
        self.epochs = epochs
        self.report: Callable[[Progress], None] = report or (lambda progress: None)
        self.should_stop: Callable[[], bool] = should_stop or (lambda: False)
        self.checkpoint_seconds = checkpoint_seconds
        self.rng = np.random.default_rng(seed)
        torch.manual_seed(seed)
        kind = spec["kind"]
        if kind in LABELLED_KINDS and len(set(data.labels[data.labels >= 0].tolist())) < 2:
            raise ValueError(f"{kind} learning needs images of at least two categories")
        if spec.get("max_images") and len(data) > int(spec["max_images"]):  # train on a random sample
            data = data.subset(np.sort(self.rng.choice(len(data), int(spec["max_images"]), replace=False)))
            self.data = data
        self.spec["classes"] = data.classes
        self.net = build_network(self.spec)
        self.prepare_seconds = 0.0
        self.cached = isinstance(self.net, EmbeddingNet) and not isinstance(self.net.trunk, torch.nn.Identity)

    # ---------------------------------------------------------------- inputs
    def _view(self, im: Image.Image, view: int) -> Image.Image:
        return im if view == 0 and self.spec["kind"] != "contrastive" else augment(im, self.rng)

    def prepare(self) -> torch.Tensor:
        """Inputs for every image and view: the frozen trunk's output (fp16), else pixels."""
        path = self.workdir / FEATURES_FILE
        if path.exists():
            return self._prepared(path)
        n, views = len(self.data), int(self.spec["views"])
        chunk = 64
        store = None
        started = time.monotonic()
        for start in range(0, n, chunk):
            if self.should_stop():
                raise Cancelled()
            images = [self.data.open(i) for i in range(start, min(n, start + chunk))]
            for v in range(views):
                out = self._prepare_view(images, v)
                if store is None:
                    store = torch.empty((views, n, *out.shape[1:]), dtype=out.dtype)
                store[v, start : start + len(images)] = out
            done = min(n, start + chunk)
            rate = done / max(1e-6, time.monotonic() - started)
            spent = time.monotonic() - started
            eta = max(self.budget - spent, (n - done) / rate + 0.2 * self.budget)
            self.report(Progress("preparing", done, n, elapsed=spent, eta_seconds=eta))
        torch.save(store, path)
        self.prepare_seconds = time.monotonic() - started
        (self.workdir / "prepare.json").write_text(json.dumps({"seconds": round(self.prepare_seconds, 1)}))
        return cast(torch.Tensor, store)

    def _prepared(self, path: Path) -> torch.Tensor:
        """The inputs an earlier session prepared, and the time that took."""
        timing = self.workdir / "prepare.json"
        self.prepare_seconds = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
        return cast(torch.Tensor, torch.load(path, weights_only=True))

    def _prepare_view(self, images: list[Image.Image], view: int) -> torch.Tensor:
        batch = np.stack([pixels(self._view(im, view), int(self.spec["image_size"])) for im in images])
        if self.cached:
            assert isinstance(self.net, EmbeddingNet)  # only embedding networks have a frozen trunk
            return self.net.trunk_features(to_tensor(batch, self.net.normalisation)).half()
        return torch.from_numpy(batch)

    def _inputs(self, store: torch.Tensor, view: np.ndarray, idx: np.ndarray) -> torch.Tensor:
        x = store[torch.from_numpy(view), torch.from_numpy(idx)]
        flip = torch.from_numpy(self.rng.random(len(idx)) < 0.5)
        if self.cached:
            x = x.float()
        else:
            x = to_tensor(x.numpy(), self.net.normalisation)
            if self.spec["kind"] != "autoencoder":
                x = _random_shift(x, self.rng)
        x[flip] = x[flip].flip(-1)  # mirror (on feature maps: the mirrored image, nearly)
        return x

    # ---------------------------------------------------------------- batches
    def _batch(
        self, store: torch.Tensor, by_class: dict[int, np.ndarray]
    ) -> tuple[Views, torch.Tensor | None]:
        """The views of a batch (one for the autoencoder, else two: anchors and positives) and,
        for the labelled kinds, the anchors' labels."""
        b = min(int(self.spec["batch_size"]), store.shape[1])
        kind = self.spec["kind"]
        if kind == "autoencoder":
            idx = self.rng.integers(0, store.shape[1], b)
            return (self._inputs(store, np.zeros(b, dtype=np.int64), idx),), None
        if kind == "contrastive":
            return self._two_views(store, b), None
        return self._positive_pairs(store, b, by_class)

    def _two_views(self, store: torch.Tensor, b: int) -> Views:
        """Two different views of the same images (one if only one was prepared)."""
        views = store.shape[0]
        idx = self.rng.choice(store.shape[1], b, replace=False)
        va = self.rng.integers(0, views, b)
        vb = (va + 1 + self.rng.integers(0, max(1, views - 1), b)) % views if views > 1 else va
        return self._inputs(store, va, idx), self._inputs(store, vb, idx)

    def _positive_pairs(
        self, store: torch.Tensor, b: int, by_class: dict[int, np.ndarray]
    ) -> tuple[Views, torch.Tensor]:
        """Labelled anchors, each with an image of its category (itself, possibly)."""
        views = store.shape[0]
        labelled = self.labelled
        anchors = labelled[self.rng.integers(0, len(labelled), b)]
        labels = self.data.labels[anchors]
        positives = np.array([by_class[c][self.rng.integers(0, len(by_class[c]))] for c in labels])
        va, vb = self.rng.integers(0, views, b), self.rng.integers(0, views, b)
        x = (self._inputs(store, va, anchors), self._inputs(store, vb, positives))
        return x, torch.from_numpy(labels)

    # ---------------------------------------------------------------- losses
    def _loss(self, x: Views, labels: torch.Tensor | None) -> torch.Tensor:
        if isinstance(self.net, ConvAutoencoder):
            return self._reconstruction_loss(self.net, x)
        return self._embedding_loss(self.net, x, labels)

    def _reconstruction_loss(self, net: ConvAutoencoder, x: Views) -> torch.Tensor:
        (clean,) = x
        noise = self.spec["noise"]
        noisy = clean + noise * torch.randn_like(clean) if noise else clean
        return F.mse_loss(net.decode(net.encode(noisy)), clean)

    def _embedding_loss(self, net: EmbeddingNet, x: Views, labels: torch.Tensor | None) -> torch.Tensor:
        spec = self.spec
        emb, extra = _embeddings(net, torch.cat(x))
        a, p = emb.chunk(2)
        if spec["kind"] == "contrastive":  # each image's two views must find each other
            assert net.projector is not None  # a contrastive network has its projection
            return losses.nt_xent(net.projector(a), net.projector(p), spec["temperature"]) + extra
        assert labels is not None  # the labelled kinds' batches carry the anchors' labels
        if net.proxies is not None:
            extra = extra + spec["proxy_weight"] * losses.proxy_softmax(
                emb, torch.cat([labels, labels]), net.proxies, spec.get("temperature", 0.2)
            )
        if spec["kind"] == "metric":
            return losses.pair_softmax(a, p, labels, spec["temperature"]) + extra
        return losses.triplet_batch_hard(a, p, labels, spec["margin"]) + extra

    # ---------------------------------------------------------------- loop
    def run(self) -> dict[str, Any]:
        store = self.prepare()
        # The budget covers the whole run: what preparing took is not left for training
        # (but a run always trains for at least a fifth of it).
        self.train_budget = max(self.budget - self.prepare_seconds, 0.2 * self.budget)
        self.labelled = np.flatnonzero(self.data.labels >= 0)
        by_class = {
            int(c): np.flatnonzero(self.data.labels == c) for c in np.unique(self.data.labels[self.labelled])
        }
        run = self._start(store.shape[1])
        self.net.train()
        while True:
            elapsed = time.monotonic() - run.started
            fraction = self._fraction(run, elapsed)
            if fraction >= 1.0:
                break
            if self.should_stop():
                run.state["elapsed"] = elapsed
                self._checkpoint(run)
                raise Cancelled()
            self._step(run, store, by_class, fraction)
            if run.state["step"] % 10 == 0 or run.state["step"] == 1:
                self._report_training(run, elapsed)
            if time.monotonic() - run.last_save > self.checkpoint_seconds:
                run.state["elapsed"] = time.monotonic() - run.started
                self._checkpoint(run)
                run.last_save = time.monotonic()
        return self._finish(run, store)

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW; the tail of a pretrained backbone may learn at a fraction of the rate."""
        tail = {id(p) for p in self.net.tail.parameters()} if isinstance(self.net, EmbeddingNet) else set()
        trainable = [p for p in self.net.parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for p in trainable if id(p) in tail],
                "scale": float(self.spec.get("tail_lr_scale", 1.0)),
            },
            {"params": [p for p in trainable if id(p) not in tail], "scale": 1.0},
        ]
        return torch.optim.AdamW(
            [g for g in groups if g["params"]], lr=self.spec["lr"], weight_decay=self.spec["weight_decay"]
        )

    def _start(self, n: int) -> _Run:
        """A new session: from the last checkpoint, if there is one."""
        optimizer = self._optimizer()
        state: RunState = {"step": 0, "elapsed": 0.0, "history": []}
        ckpt = self.workdir / CHECKPOINT_FILE
        if ckpt.exists():
            saved = torch.load(ckpt, weights_only=False)
            self.net.load_state_dict(saved["net"])
            optimizer.load_state_dict(saved["optimizer"])
            state = saved["state"]
            self.rng = np.random.default_rng(state["step"] + 1)
        steps_per_epoch = max(1, math.ceil(n / int(self.spec["batch_size"])))
        total_steps = math.ceil(self.epochs * steps_per_epoch) if self.epochs else None
        started = time.monotonic() - state["elapsed"]
        return _Run(optimizer, state, ckpt, steps_per_epoch, total_steps, started, time.monotonic())

    def _fraction(self, run: _Run, elapsed: float) -> float:
        """How far the run is: through its time budget, or its epochs if those end sooner."""
        fraction = elapsed / self.train_budget if self.train_budget else 0.0
        if run.total_steps:
            fraction = max(fraction, run.state["step"] / run.total_steps)
        return fraction

    def _step(self, run: _Run, store: torch.Tensor, by_class: dict[int, np.ndarray], fraction: float) -> None:
        """One optimiser step; the rate warms up over 50 steps, then follows the cosine."""
        warmup = min(1.0, (run.state["step"] + 1) / 50)
        lr = self.spec["lr"] * warmup * 0.5 * (1 + math.cos(math.pi * fraction))
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("scale", 1.0)
        x, labels = self._batch(store, by_class)
        loss = self._loss(x, labels)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        run.state["step"] += 1
        value = loss.item()
        run.running = value if run.running is None else 0.95 * run.running + 0.05 * value

    def _report_training(self, run: _Run, elapsed: float) -> None:
        step, running = run.state["step"], cast(float, run.running)
        epoch = step / run.steps_per_epoch
        run.state["history"].append([round(elapsed, 1), round(epoch, 3), round(running, 5)])
        eta = self.train_budget - elapsed
        if run.total_steps:
            rate = step / max(elapsed, 1e-6)
            eta = min(eta, (run.total_steps - step) / rate)
        self.report(Progress("training", step, run.total_steps or 0, epoch, step, running, elapsed, eta))

    def _finish(self, run: _Run, store: torch.Tensor) -> dict[str, Any]:
        """The last checkpoint, the model file and the run's figures (with its loss history)."""
        state = run.state
        state["elapsed"] = time.monotonic() - run.started
        self._checkpoint(run)
        self.net.eval()
        n = store.shape[1]
        result: dict[str, Any] = {
            "steps": state["step"],
            "epochs": round(state["step"] / run.steps_per_epoch, 3),
            "train_seconds": round(state["elapsed"], 1),
            "prepare_seconds": round(self.prepare_seconds, 1),
            "final_loss": round(run.running, 5) if run.running is not None else None,
            "images": n,
        }
        if isinstance(self.net, ConvAutoencoder):
            every = max(1, n // 10_000)  # a spread sample: the whole set would add minutes
            result["train_mse"] = round(reconstruction_mse(self.net, store[0][::every]), 5)
        save_model(self.workdir / MODEL_FILE, self.net, self.spec, result)
        (self.workdir / "history.json").write_text(json.dumps(state["history"]))
        self.report(Progress("done", n, n, result["epochs"], state["step"], run.running, state["elapsed"], 0))
        return {**result, "history": state["history"]}

    def _checkpoint(self, run: _Run) -> None:
        tmp = run.checkpoint.with_suffix(".tmp")
        torch.save(
            {"net": self.net.state_dict(), "optimizer": run.optimizer.state_dict(), "state": run.state}, tmp
        )
        tmp.replace(run.checkpoint)
        (self.workdir / "history.json").write_text(json.dumps(run.state["history"]))  # the live loss curve


def _embeddings(net: EmbeddingNet, both: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | float]:
    """Unit vectors of a batch and, with bits, the term pushing activations to 0 or 1."""
    if net.bits:
        h = net.latent(both)
        return F.normalize(2 * h - 1, dim=1), 0.1 * losses.binarisation(h)
    return F.normalize(net.latent(both), dim=1), 0.0


def _random_shift(x: torch.Tensor, rng: np.random.Generator, pad: int = 4) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflect padding, then a random crop)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy, dx = rng.integers(0, 2 * pad + 1, 2)
    return padded[..., dy : dy + h, dx : dx + w]


@torch.no_grad()
def reconstruction_mse(net: ConvAutoencoder, pixels_uint8: torch.Tensor, batch: int = 500) -> float:
    """Mean squared error per pixel and channel, pixels in [-0.5, 0.5]."""
    net.eval()
    total, count = 0.0, 0
    for start in range(0, len(pixels_uint8), batch):
        x = to_tensor(pixels_uint8[start : start + batch].numpy(), net.normalisation)
        total += float(F.mse_loss(net.decode(net.encode(x)), x, reduction="sum"))
        count += x.numel()
    return total / count
