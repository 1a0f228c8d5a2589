"""Weighted k-nearest-neighbour evaluation of frozen features: evidence that pretraining learned.

As in DINO's kNN monitor (Wu et al. 2018 weighting), adapted to multi-label: features are
L2-normalised, each test image takes its k most cosine-similar training images, weights them by
exp(similarity / T), and scores class c as  sum(w * y_c) / sum(w)  -- a value in [0, 1], so the
benchmark's 0.5 threshold and ``sewer_hf.metrics.compute_metrics`` apply unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from sewer_hf.errors import ConfigError, DataError
from sewer_hf.metrics import compute_metrics

DEFAULT_K = 20  # DINO's kNN uses 20 neighbours
DEFAULT_TEMPERATURE = 0.07  # DINO's kNN temperature


def _split_batch(batch: Any):
    """(images, labels or None) from a collate output: a dict with "pixel_values" (and
    "labels" when the data has them) or an (images, labels) pair."""
    if isinstance(batch, dict):
        if "pixel_values" not in batch:
            raise DataError(f"batch dict lacks key 'pixel_values'; has {sorted(batch)}")
        return batch["pixel_values"], batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise DataError(f"batch of type {type(batch).__name__}: expected a dict with pixel_values/labels or (images, labels)")


def extract_features(
    model_fn: Callable[[Any], Any],
    dataloader: Iterable,
    device: str = "cpu",
    progress: bool = True,
):
    """Run ``model_fn(images) -> (B, D) features`` over a dataloader, without gradients.

    Returns ``(features float32 (N, D), labels float32 (N, C) or None for unlabelled data)``,
    both on the CPU. ``None`` batches (every image unreadable, see ``collate_skip_bad``) are
    skipped. Put the model in eval mode yourself (``model_fn`` may be any callable).
    """
    import torch
    from tqdm.auto import tqdm

    features, labels = [], []
    with torch.inference_mode():
        for batch in tqdm(dataloader, desc="features", disable=not progress, leave=False):
            if batch is None:
                continue
            images, batch_labels = _split_batch(batch)
            out = model_fn(images.to(device, non_blocking=True))
            if hasattr(out, "last_hidden_state") and not isinstance(out, torch.Tensor):
                raise DataError("model_fn returned a model output object; return the (B, D) CLS features tensor")
            if out.ndim != 2 or out.shape[0] != len(images):
                raise DataError(f"model_fn returned shape {tuple(out.shape)}: expected ({len(images)}, D)")
            features.append(out.float().cpu())
            if batch_labels is not None:
                labels.append(torch.as_tensor(batch_labels).float().cpu())
    if not features:
        raise DataError("the dataloader yielded no batches")
    return torch.cat(features), (torch.cat(labels) if labels else None)


def _as_tensor(name: str, value):
    import torch

    tensor = torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value)
    if tensor.ndim != 2:
        raise DataError(f"{name} has shape {tuple(tensor.shape)}: expected 2 dimensions (N, D)")
    return tensor.float()


def knn_scores(
    train_features,
    train_labels,
    test_features,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 1024,
) -> np.ndarray:
    """Per-class kNN vote in [0, 1] for each test row: ``(N_test, C)`` float32 array.

    Test rows are processed ``batch_size`` at a time so the (rows x N_train) similarity matrix
    stays small. ``k`` larger than the training set uses every training image.
    """
    import torch

    if k < 1:
        raise ConfigError(f"k={k!r}: expected at least 1 neighbour")
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature!r}: expected > 0")
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: expected >= 1")
    train = _as_tensor("train_features", train_features)
    labels = _as_tensor("train_labels", train_labels)
    test = _as_tensor("test_features", test_features)
    if len(train) == 0 or len(labels) != len(train):
        raise DataError(f"{len(train)} training features but {len(labels)} training label rows (need equal, > 0)")
    if test.shape[1] != train.shape[1]:
        raise DataError(f"test features have dimension {test.shape[1]}, training features {train.shape[1]}")

    train = torch.nn.functional.normalize(train, dim=1)
    test = torch.nn.functional.normalize(test, dim=1)
    k = min(k, len(train))
    out = torch.empty(len(test), labels.shape[1])
    for start in range(0, len(test), batch_size):
        similarity = test[start : start + batch_size] @ train.T  # (rows, N_train) cosine
        top_sim, top_idx = similarity.topk(k, dim=1)
        # Softmax over the k neighbours == exp(s/T) / sum exp(s/T), without overflow.
        weights = torch.softmax(top_sim / temperature, dim=1)  # (rows, k)
        out[start : start + batch_size] = torch.einsum("rk,rkc->rc", weights, labels[top_idx])
    return out.clamp_(0.0, 1.0).numpy()


def knn_evaluate(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k: int = DEFAULT_K,
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 1024,
    threshold: float = 0.5,
) -> dict:
    """Benchmark metrics (``F2_CIW``, ``F1_Normal``, ``mAP``, ... as fractions) of the kNN vote."""

    scores = knn_scores(train_features, train_labels, test_features, k=k, temperature=temperature, batch_size=batch_size)
    targets = np.asarray(test_labels.cpu() if hasattr(test_labels, "cpu") else test_labels)
    if len(targets) != len(scores):
        raise DataError(f"{len(scores)} test features but {len(targets)} test label rows")
    metrics = compute_metrics(scores, targets, threshold=threshold)
    metrics["knn"] = {"k": k, "temperature": temperature}
    return metrics
