"""Temperature scaling (Guo et al., 2017) and the calibration figures: torch-free, numpy + scipy.

One scalar ``T`` divides the logits; it is fitted by minimising the negative log-likelihood of the
validation labels. ``T > 1`` softens an over-confident model; the predicted class never changes.
Figures that judge a fitted ``T`` are cross-fitted (:func:`cross_fit`): each fold is scored with a
temperature fitted on the other folds, never on the images it is scored on.
"""
from __future__ import annotations

from typing import Any

import numpy as np

ECE_BINS = 15
T_BOUNDS = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``(N, C)`` logits → probabilities of ``softmax(logits / temperature)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def mean_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """``(N, C)`` logits, or ``(N, V, C)``: ``V`` views of each image (test-time augmentation) →
    ``(N, C)`` probabilities: ``softmax(logits / temperature)``, averaged over the views."""
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2:
        return softmax(z, temperature)
    n, v, c = z.shape
    return softmax(z.reshape(n * v, c), temperature).reshape(n, v, c).mean(axis=1)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (natural log) of ``labels`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    top = z.max(axis=1, keepdims=True)
    log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    return max(0.0, float(np.mean(log_norm - z[np.arange(len(z)), np.asarray(labels, dtype=np.int64)])))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The ``T`` in :data:`T_BOUNDS` minimising :func:`nll` (bounded Brent search on ``log T``;
    the NLL is convex in ``1/T``, so the 1-D minimum is the global one)."""
    from scipy.optimize import minimize_scalar

    if len(logits) == 0:
        return 1.0
    low, high = np.log(T_BOUNDS[0]), np.log(T_BOUNDS[1])
    result = minimize_scalar(lambda log_t: nll(logits, labels, float(np.exp(log_t))), bounds=(low, high),
                             method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Per equal-width bin of the max probability on [0, 1]: mean confidence, accuracy and count
    (empty bins: confidence and accuracy ``None``)."""
    probs = np.asarray(probs, dtype=np.float64)
    confidence, predicted = probs.max(axis=1), probs.argmax(axis=1)
    correct = predicted == np.asarray(labels)
    # bin i holds (i/bins, (i+1)/bins]; a confidence of exactly 0 would go to bin 0
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    out: dict[str, list] = {"confidence": [], "accuracy": [], "count": []}
    for b in range(bins):
        member = index == b
        count = int(member.sum())
        out["count"].append(count)
        out["confidence"].append(float(confidence[member].mean()) if count else None)
        out["accuracy"].append(float(correct[member].mean()) if count else None)
    return out


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: the count-weighted mean |accuracy - confidence| over ``bins``
    equal-width bins of the max probability."""
    table = reliability(probs, labels, bins)
    total = sum(table["count"])
    if total == 0:
        return 0.0
    return float(sum(n * abs(a - c) for n, a, c in zip(table["count"], table["accuracy"], table["confidence"])
                     if n) / total)


def fold_indices(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per image, stratified by label and seeded."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), dtype=np.int64)
    offset = 0
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        out[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)  # classes smaller than `folds` still spread over all folds
    return out


def cross_fit(logits: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """Each fold's probabilities with the temperature fitted on the other folds.

    Returns ``probs`` (``(N, C)``, cross-fitted), ``temperatures`` (one per fold) and per-fold
    ``ece``/``nll`` before and after: the honest figures for a temperature fitted on validation data.
    """
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    folds = max(2, min(folds, len(labels)))
    fold = fold_indices(labels, folds, seed)
    probs = np.zeros_like(logits)
    per_fold: dict[str, list[float]] = {"temperature": [], "ece_before": [], "ece_after": [],
                                        "nll_before": [], "nll_after": []}
    for f in range(folds):
        held, rest = fold == f, fold != f
        if not held.any():
            continue
        t = fit_temperature(logits[rest], labels[rest])
        probs[held] = softmax(logits[held], t)
        per_fold["temperature"].append(t)
        per_fold["ece_before"].append(ece(softmax(logits[held]), labels[held]))
        per_fold["ece_after"].append(ece(probs[held], labels[held]))
        per_fold["nll_before"].append(nll(logits[held], labels[held]))
        per_fold["nll_after"].append(nll(logits[held], labels[held], t))
    return {"probs": probs, "folds": folds, "per_fold": per_fold}


def calibrate(logits: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """What ``model.json["calibration"]`` holds: ``T`` fitted on all of ``(logits, labels)`` and the
    ECE/NLL before and after, cross-fitted over ``folds`` folds (pooled over the held-out images)."""
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    crossed = cross_fit(logits, labels, folds, seed)
    after, eps = crossed["probs"], 1e-12
    return {
        "temperature": fit_temperature(logits, labels),
        "nll_before": nll(logits, labels),
        "nll_after": float(-np.mean(np.log(np.clip(after[np.arange(len(labels)), labels], eps, 1.0)))),
        "ece_before": ece(softmax(logits), labels),
        "ece_after": ece(after, labels),
        "scored": f"{crossed['folds']}-fold cross-fitted on the validation images",
        "num_images": int(len(labels)),
        "reliability_before": reliability(softmax(logits), labels),
        "reliability_after": reliability(after, labels),
    }
