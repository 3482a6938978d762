"""Classification metrics, one implementation (scikit-learn's) for training, ``graft evaluate`` and
the reports: accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1, the confusion
matrix and the log-loss."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def accuracy(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray) -> float:
    """The fraction of ``preds`` equal to ``labels`` (0.0 for no images)."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(np.asarray(labels), np.asarray(preds))) if len(labels) else 0.0


def balanced_accuracy(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray) -> float:
    """The mean recall over the classes present in ``labels`` (accuracy when every class has as many
    images; 0.0 for no images)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    if not len(labels):
        return 0.0
    with warnings.catch_warnings():  # a predicted class absent from ``labels`` has no recall: left out, as said
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(np.asarray(labels), np.asarray(preds)))


def macro_f1(labels: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray) -> float:
    """The unweighted mean F1 over the classes in ``labels`` or ``preds`` (0.0 for no images)."""
    from sklearn.metrics import f1_score

    if not len(labels):
        return 0.0
    return float(f1_score(np.asarray(labels), np.asarray(preds), average="macro", zero_division=0))


def log_loss(labels: Sequence[int] | np.ndarray, probs: np.ndarray) -> float:
    """Mean cross-entropy of ``(N, C)`` class probabilities against ``labels`` (natural log)."""
    from sklearn.metrics import log_loss as sk_log_loss

    probs = np.asarray(probs, dtype=np.float64)
    if not len(probs) or not np.isfinite(probs).all():  # a diverged model: the caller stops on nan
        return float("nan")
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax rows sum to 1 only to ~1e-7
    return float(sk_log_loss(np.asarray(labels), probs, labels=list(range(probs.shape[1]))))


def binomial_se(accuracy: float, num_images: int) -> float:
    """The standard error of an accuracy measured on ``num_images`` images (binomial)."""
    return math.sqrt(accuracy * (1 - accuracy) / max(num_images, 1))


def classification_metrics(labels: np.ndarray, preds: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support and the confusion
    matrix (rows = true)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    index = list(range(len(classes)))
    labels, preds = np.asarray(labels, dtype=np.int64), np.asarray(preds, dtype=np.int64)
    if len(labels):
        precision, recall, f1, support = precision_recall_fscore_support(
            labels, preds, labels=index, zero_division=0)
        matrix = confusion_matrix(labels, preds, labels=index).tolist()
    else:
        precision = recall = f1 = support = np.zeros(len(classes))
        matrix = [[0] * len(classes) for _ in classes]
    return {
        "accuracy": accuracy(labels, preds),
        "balanced_accuracy": balanced_accuracy(labels, preds),
        "macro_f1": macro_f1(labels, preds),
        "num_images": int(len(labels)),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": matrix,
        "classes": list(classes),
    }
