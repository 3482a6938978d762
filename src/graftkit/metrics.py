"""Classification metrics from labels and predictions."""
from __future__ import annotations

import numpy as np


def classification_metrics(labels: np.ndarray, preds: np.ndarray, classes: list[str]) -> dict:
    """Accuracy, per-class precision/recall/F1/support and the confusion matrix (rows = true)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    index = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, preds, labels=index, zero_division=0)
    return {
        "accuracy": float(np.mean(np.asarray(labels) == np.asarray(preds))) if len(labels) else 0.0,
        "num_images": int(len(labels)),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])} for i, c in enumerate(classes)},
        "confusion_matrix": confusion_matrix(labels, preds, labels=index).tolist(),
        "classes": list(classes),
    }
