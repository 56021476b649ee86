"""Learned embeddings: data sources, networks, losses, the training loop and evaluation.

Importing this package does not import torch; the submodules that train or embed do."""
