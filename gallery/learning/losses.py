"""Losses on L2-normalised embeddings (rows of `a`, `p`: anchors and their positives)."""

import torch
from torch.nn import functional as F


def pair_softmax(
    a: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Each anchor must pick a positive of its own class among all positives of the batch:
    a softmax over similarities / temperature; every same-class positive counts as right
    (the multi-positive form, so batches may hold a class more than once). Symmetric."""
    logits = a @ p.T / temperature
    same = (labels[:, None] == labels[None, :]).float()
    target = same / same.sum(dim=1, keepdim=True)
    forward = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
    backward = -(target.T * F.log_softmax(logits.T, dim=1)).sum(dim=1).mean()
    return (forward + backward) / 2


def proxy_softmax(
    x: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, temperature: float = 0.2
) -> torch.Tensor:
    """Each embedding must pick its class among learned class representatives (proxies): the
    same softmax over similarities, with positives that gather the whole class at once, so
    it converges in a fraction of the steps pairs need (normalised-softmax loss)."""
    logits = x @ F.normalize(proxies, dim=1).T / temperature
    return F.cross_entropy(logits, labels)


def triplet_batch_hard(
    a: torch.Tensor, p: torch.Tensor, labels: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """Triplet loss with a margin: for each item, its farthest positive and nearest negative
    in the batch (distances between unit vectors)."""
    x = torch.cat([a, p])
    y = torch.cat([labels, labels])
    dist = (2 - 2 * x @ x.T).clamp(min=1e-8).sqrt()
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=x.device)
    hardest_positive = dist.masked_fill(~same | eye, -1).max(dim=1).values
    hardest_negative = dist.masked_fill(same, 9).min(dim=1).values
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """SimCLR: two augmented views of the same image must find each other among 2B - 1."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, target)


def binarisation(h: torch.Tensor) -> torch.Tensor:
    """Pushes sigmoid activations towards 0 or 1 so thresholding loses little."""
    return (0.25 - (h - 0.5).pow(2)).mean()
