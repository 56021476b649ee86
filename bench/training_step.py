"""Speed of one metric-learning training step, with and without `SmallMapDepthwise`.

The step is what `train_model --kind metric --bits 48` runs for each batch with the default
settings: 128 anchor/positive pairs of cached stage-5 features (112 x 8 x 8 at 128 px) through
the trained stages, the head, the pair and proxy losses, backward, AdamW. The baseline is the
same network with PyTorch's own depthwise convolutions, timed in alternating rounds in the same
run (the machine is noisy); the figure is the ratio of the medians.

    .venv/bin/python bench/training_step.py [--rounds 5 --steps 5]"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import harness as h
import torch
from torch.nn import functional as F

from gallery.learning import losses
from gallery.learning.networks import EmbeddingNet, SmallMapDepthwise
from gallery.learning.spec import make_spec


def with_plain_depthwise(module: torch.nn.Module) -> torch.nn.Module:
    """The baseline: each `SmallMapDepthwise` back to the convolution it stands for."""
    for name, child in module.named_children():
        if isinstance(child, SmallMapDepthwise):
            conv = copy.deepcopy(child._probe[0])
            conv.weight = child.weight
            setattr(module, name, conv)
        else:
            with_plain_depthwise(child)
    return module


def step_function(net: EmbeddingNet, features: torch.Tensor, labels: torch.Tensor, spec: dict):
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        h_ = net.latent(features)
        emb = F.normalize(2 * h_ - 1, dim=1)
        a, p = emb.chunk(2)
        loss = (
            losses.pair_softmax(a, p, labels, spec["temperature"])
            + losses.proxy_softmax(emb, torch.cat([labels, labels]), net.proxies, spec["temperature"])
            + 0.1 * losses.binarisation(h_)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and variant")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    spec = make_spec("metric", bits=48)
    spec["classes"] = [str(i) for i in range(10)]
    fast = EmbeddingNet(spec).train()
    plain = with_plain_depthwise(copy.deepcopy(fast)).train()
    pairs = int(spec["batch_size"])
    size = int(spec["image_size"]) // 16  # the stage-5 map
    with torch.no_grad():
        features = fast.trunk_features(torch.randn(2 * pairs, 3, 16 * size, 16 * size))
    labels = torch.randint(0, 10, (pairs,))
    steps = {
        "small_map_depthwise": step_function(fast, features, labels, spec),
        "pytorch_depthwise": step_function(plain, features, labels, spec),
    }
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for step in steps.values():  # warm-up
        step()
    for _ in range(args.rounds):
        for name, step in steps.items():
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            seconds[name].append((time.perf_counter() - started) / args.steps)
    figures = {name: {"median_step_s": round(statistics.median(s), 3)} for name, s in seconds.items()}
    for name, f in figures.items():
        f["steps_per_s"] = round(1 / f["median_step_s"], 3)
        h.log(f"{name:22s} {f['median_step_s']:.3f} s/step  {f['steps_per_s']:.3f} steps/s")
    figures["speedup"] = round(
        figures["pytorch_depthwise"]["median_step_s"] / figures["small_map_depthwise"]["median_step_s"], 2
    )
    h.log(f"speed-up {figures['speedup']}x  ({2 * pairs} feature maps of {size}x{size} per step)")
    h.write_result(h.RESULTS_FILE, "training_step.py", vars(args), figures, full_size=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
