"""Weighted kNN evaluation: recovers labels of clustered features, k/T behaviour, chunking."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sewer_hf.data.labels import NUM_CLASSES
from sewer_hf.errors import ConfigError, DataError
from sewer_hf.models.knn import extract_features, knn_evaluate, knn_scores


def _label_sets() -> list[tuple[int, ...]]:
    """10 clusters that between them use all 17 classes, plus a normal (all-zero) cluster."""
    return [(2 * i, 2 * i + 1) for i in range(8)] + [(16,), ()]


def _clustered(n_per_cluster: int, dim=32, noise=0.3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    sets = _label_sets()
    centres = torch.randn(len(sets), dim, generator=torch.Generator().manual_seed(123)) * 2
    feats, labels = [], []
    for c, classes in enumerate(sets):
        feats.append(centres[c] + noise * torch.randn(n_per_cluster, dim, generator=gen))
        y = torch.zeros(n_per_cluster, NUM_CLASSES)
        y[:, list(classes)] = 1
        labels.append(y)
    return torch.cat(feats), torch.cat(labels)


def test_vote_recovers_labels_of_clustered_features():
    train_x, train_y = _clustered(40, seed=0)
    test_x, test_y = _clustered(20, seed=1)
    metrics = knn_evaluate(train_x, train_y, test_x, test_y)
    assert metrics["F2_CIW"] > 0.98 and metrics["F1_Normal"] > 0.98 and metrics["mAP"] > 0.98

    random = knn_evaluate(torch.randn_like(train_x), train_y, torch.randn_like(test_x), test_y)
    assert random["F2_CIW"] < 0.5 and random["mAP"] < 0.5
    assert metrics["F2_CIW"] - random["F2_CIW"] > 0.5


def test_scores_are_weighted_votes_in_unit_interval():
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    train_y = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])
    test_x = torch.tensor([[2.0, 0.5]])  # scale must not matter (cosine)
    scores = knn_scores(train_x, train_y, test_x, k=3, temperature=0.5)
    sims = torch.nn.functional.normalize(test_x, dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T
    top = sims[0].topk(3)
    w = torch.exp(top.values / 0.5)
    expected = (w[:, None] * train_y[top.indices]).sum(0) / w.sum()
    np.testing.assert_allclose(scores[0], expected.numpy(), rtol=1e-5)
    assert scores.shape == (1, 2) and scores.dtype == np.float32


def test_k_and_temperature_behaviour():
    train_x, train_y = _clustered(10, noise=1.0, seed=2)
    test_x, _ = _clustered(5, noise=1.0, seed=3)
    sims = torch.nn.functional.normalize(test_x, dim=1) @ torch.nn.functional.normalize(train_x, dim=1).T
    nearest = train_y[sims.argmax(dim=1)].numpy()

    # k=1 and a tiny temperature both reduce to the single nearest neighbour's labels.
    np.testing.assert_array_equal(knn_scores(train_x, train_y, test_x, k=1), nearest)
    np.testing.assert_allclose(knn_scores(train_x, train_y, test_x, k=20, temperature=1e-4), nearest, atol=1e-4)
    # A huge temperature weights the k neighbours equally: the plain mean of their labels.
    top = sims.topk(7, dim=1).indices
    np.testing.assert_allclose(
        knn_scores(train_x, train_y, test_x, k=7, temperature=1e6), train_y[top].mean(dim=1).numpy(), atol=1e-5
    )
    # k beyond the training set uses all of it.
    all_k = knn_scores(train_x[:5], train_y[:5], test_x, k=50, temperature=1e6)
    np.testing.assert_allclose(all_k, np.broadcast_to(train_y[:5].mean(0).numpy(), all_k.shape), atol=1e-5)


def test_chunking_gives_same_result_as_one_chunk():
    train_x, train_y = _clustered(15, noise=1.0, seed=4)
    test_x, _ = _clustered(7, noise=1.0, seed=5)
    whole = knn_scores(train_x, train_y, test_x, batch_size=10_000)
    chunked = knn_scores(train_x, train_y, test_x, batch_size=6)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-6)


def test_extract_features_accepts_dict_and_tuple_batches():
    images = torch.arange(5 * 3 * 2 * 2, dtype=torch.float32).view(5, 3, 2, 2)
    labels = torch.eye(5, NUM_CLASSES)
    dict_batches = [{"pixel_values": images[:3], "labels": labels[:3]}, {"pixel_values": images[3:], "labels": labels[3:]}]
    tuple_batches = [(images[:2], labels[:2]), (images[2:], labels[2:])]

    def model_fn(x):
        return x.flatten(1)[:, :4] * 2

    for loader in (dict_batches, tuple_batches):
        feats, labs = extract_features(model_fn, loader, progress=False)
        torch.testing.assert_close(feats, images.flatten(1)[:, :4] * 2)
        torch.testing.assert_close(labs, labels)
        assert feats.dtype == torch.float32 and not feats.requires_grad


def test_bad_inputs_raise_clear_errors():
    x, y = _clustered(2)
    with pytest.raises(ConfigError, match="k=0"):
        knn_scores(x, y, x, k=0)
    with pytest.raises(ConfigError, match="temperature"):
        knn_scores(x, y, x, temperature=0)
    with pytest.raises(DataError, match="dimension"):
        knn_scores(x, y, x[:, :5])
    with pytest.raises(DataError, match="label rows"):
        knn_scores(x, y[:3], x)
    with pytest.raises(DataError, match="pixel_values"):
        extract_features(lambda t: t, [{"images": x, "labels": y}], progress=False)
