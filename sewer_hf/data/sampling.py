"""Sampling a multi-label training set: which frames (a fraction of them, the paper's 10 % / 50 %
experiments) and how often (repeat-factor sampling for the rare classes).

Iterative stratification (Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011) keeps each class's
share close to the requested fraction, rarest classes first; afterwards every class present in
the full set is guaranteed at least one example. Deterministic for a given seed.

Repeat-factor sampling (Gupta, Dollar & Girshick, LVIS, CVPR 2019) draws the frames of rare
classes more often: a class seen in a share f_c of the frames gets r_c = max(1, sqrt(t / f_c)),
a frame the largest r_c of its classes (a normal frame: 1), and each epoch draws N frames with
replacement in proportion to r, so the epoch, and the step budget, keep their length.
"""
from __future__ import annotations

import numpy as np
import torch

from sewer_hf.errors import ConfigError


def stratified_fraction(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Sorted indices of about ``fraction * N`` rows of a (N, C) 0/1 matrix, stratified per class."""
    labels = np.asarray(labels).astype(bool)
    n = labels.shape[0]
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"fraction={fraction}: expected a value in (0, 1]")
    if fraction >= 1.0 or n == 0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    n_take = max(1, int(round(fraction * n)))
    # Desired counts per fold (0 = taken, 1 = rest), per class and in total.
    want_class = np.stack([labels.sum(0) * fraction, labels.sum(0) * (1 - fraction)]).astype(np.float64)
    want_total = np.array([n_take, n - n_take], dtype=np.float64)
    fold = np.full(n, -1, dtype=np.int8)
    remaining = labels.copy()
    while remaining.any():
        counts = remaining.sum(0)
        present = np.flatnonzero(counts)
        rarest = present[counts[present] == counts[present].min()]
        c = rng.choice(rarest)
        rows = np.flatnonzero(remaining[:, c])
        for i in rng.permutation(rows):
            w = want_class[:, c]
            if w[0] != w[1]:
                f = int(np.argmax(w))
            elif want_total[0] != want_total[1]:
                f = int(np.argmax(want_total))
            else:
                f = int(rng.integers(2))
            fold[i] = f
            want_class[f] -= labels[i]
            want_total[f] -= 1
            remaining[i] = False
    # Rows without any label (normal frames) fill what each fold still wants.
    free = rng.permutation(np.flatnonzero(fold < 0))
    k = int(np.clip(round(want_total[0]), 0, len(free)))
    fold[free[:k]] = 0
    fold[free[k:]] = 1
    taken = fold == 0
    _ensure_every_class(labels, taken, rng)
    return np.flatnonzero(taken)


def _ensure_every_class(labels: np.ndarray, taken: np.ndarray, rng: np.random.Generator) -> None:
    """Move one example of each class missing from the subset into it (swapping a normal one out)."""
    for c in np.flatnonzero(labels.any(0) & ~labels[taken].any(0)):
        taken[rng.choice(np.flatnonzero(labels[:, c]))] = True
        normals = np.flatnonzero(taken & ~labels.any(1))
        if len(normals):
            taken[rng.choice(normals)] = False


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Each frame's repeat factor for a (N, C) 0/1 matrix: max(1, max over its classes of
    sqrt(threshold / f_c)), f_c the share of frames showing class c; all 1 when threshold <= 0."""
    labels = np.asarray(labels).astype(bool)
    if threshold <= 0 or labels.size == 0:
        return np.ones(labels.shape[0])
    freq = labels.mean(axis=0)
    per_class = np.sqrt(threshold / np.maximum(freq, 1e-12)).clip(min=1.0)
    return np.where(labels, per_class, 1.0).max(axis=1, initial=1.0)


class RepeatFactorSampler(torch.utils.data.Sampler):
    """``len(weights)`` indices per epoch, drawn with replacement in proportion to ``weights``.
    Seeded by (seed, epoch): every process draws the same order (accelerate then shards the
    batches) and a resumed run the same batches; ``set_epoch`` is called by the loader."""

    def __init__(self, weights: np.ndarray, seed: int = 0) -> None:
        self.weights = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights.ndim != 1 or len(self.weights) == 0 or not bool((self.weights > 0).all()):
            raise ConfigError(f"repeat factors: expected one positive weight per frame, got {tuple(self.weights.shape)}")
        self.seed, self.epoch = int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self):
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % (2**63))
        return iter(torch.multinomial(self.weights, len(self.weights), replacement=True, generator=generator).tolist())
