"""The "unknown" score: how far an image's pooled features lie from the training images'. Torch-free.

Features are L2-normalised; the raw score is the mean cosine distance to the ``k`` nearest rows of a
bank of training features (Sun et al., 2022, "Out-of-distribution detection with deep nearest
neighbors"). It is then expressed as a p-value against held-out in-distribution images (the
validation images' own distances to the bank): ``p = fraction of held-out images whose distance is
at least this image's``. ``p`` means the same on every dataset: a threshold of 0.05 keeps about
95 % of in-distribution images, whatever the backbone or the spread of the classes.

``ood.safetensors`` holds ``bank`` (``(N, D)`` float16, normalised) and ``reference`` (``(M,)``
float32, sorted held-out distances); ``model.json["ood"]`` names it with its blake2b.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

OOD_FILE = "ood.safetensors"
DEFAULT_K = 10
DEFAULT_KEEP = 0.95
MAX_BANK_ROWS = 4096


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float32); an all-zero row stays zero."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int = DEFAULT_K, chunk: int = 256) -> np.ndarray:
    """``(N,)`` mean cosine distance of each (raw) feature row to its ``k`` nearest bank rows."""
    query = normalise(features)
    bank = np.asarray(bank, dtype=np.float32)
    k = max(1, min(k, len(bank)))
    out = np.empty(len(query), dtype=np.float32)
    for start in range(0, len(query), chunk):
        similarity = query[start:start + chunk] @ bank.T               # (n, N)
        nearest = np.partition(-similarity, k - 1, axis=1)[:, :k]      # the k largest, negated
        out[start:start + chunk] = 1.0 + nearest.mean(axis=1)           # 1 - mean similarity
    return out


def p_values(distances: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Fraction of ``reference`` distances ``>=`` each distance: 1 near the training data, 0 far."""
    reference = np.sort(np.asarray(reference, dtype=np.float32))
    if not len(reference):
        return np.ones(len(distances))
    below = np.searchsorted(reference, np.asarray(distances, dtype=np.float32), side="left")
    return (len(reference) - below) / len(reference)


def sample_bank(features: np.ndarray, labels: Sequence[int], max_rows: int = MAX_BANK_ROWS,
                seed: int = 0) -> np.ndarray:
    """Normalised training features, at most ``max_rows``: a seeded subsample of each class in
    proportion to its size (every class keeps at least one row), as float16."""
    features, labels = normalise(features), np.asarray(labels)
    if len(features) > max_rows:
        rng = np.random.default_rng(seed)
        keep = []
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            take = max(1, int(round(max_rows * len(members) / len(labels))))
            keep.extend(rng.choice(members, size=min(take, len(members)), replace=False).tolist())
        features = features[np.sort(np.asarray(keep))[:max_rows]]
    return features.astype(np.float16)


def digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


@dataclass
class OodScorer:
    """The bank, the held-out reference distances and the threshold on the p-value."""

    bank: np.ndarray
    reference: np.ndarray
    k: int = DEFAULT_K
    threshold: float = 1 - DEFAULT_KEEP  # p below it: "unknown"
    msp_threshold: float | None = None   # max calibrated probability below it: unknown by MSP

    def distances(self, features: np.ndarray) -> np.ndarray:
        return knn_distance(features, self.bank, self.k)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` p-values: the fraction of held-out in-distribution images farther away."""
        return p_values(self.distances(features), self.reference)

    def is_unknown(self, features: np.ndarray) -> np.ndarray:
        return self.score(features) < self.threshold

    def to_bytes(self) -> bytes:
        from safetensors.numpy import save

        return save({"bank": np.ascontiguousarray(self.bank, dtype=np.float16),
                     "reference": np.ascontiguousarray(np.sort(self.reference), dtype=np.float32)})

    def meta(self, data: bytes, keep_fraction: float) -> dict[str, Any]:
        """What ``model.json["ood"]`` holds for this scorer, written as ``data``."""
        return {"file": OOD_FILE, "blake2b": digest(data), "k": self.k, "metric": "cosine",
                "score": "p-value against held-out validation distances", "keep_fraction": keep_fraction,
                "threshold": self.threshold, "msp_threshold": self.msp_threshold,
                "bank_rows": int(len(self.bank)), "reference_rows": int(len(self.reference)),
                "num_features": int(self.bank.shape[1])}


def build_scorer(train_features: np.ndarray, train_labels: Sequence[int], val_features: np.ndarray,
                 val_msp: np.ndarray | None = None, keep_fraction: float = DEFAULT_KEEP, k: int = DEFAULT_K,
                 max_rows: int = MAX_BANK_ROWS, seed: int = 0) -> OodScorer:
    """A scorer from the trained model's features: the bank from train, the reference from val.

    The p-value threshold keeping ``keep_fraction`` of the reference is ``1 - keep_fraction``; the
    MSP threshold is the matching quantile of the validation images' max probabilities."""
    bank = sample_bank(train_features, train_labels, max_rows, seed)
    reference = knn_distance(val_features, bank, k)
    msp = None if val_msp is None or not len(val_msp) else float(np.quantile(val_msp, 1 - keep_fraction))
    return OodScorer(bank, np.sort(reference), k, round(1 - keep_fraction, 6), msp)


def load_scorer(folder: Path, meta: dict[str, Any], error: type[Exception] = ValueError) -> OodScorer | None:
    """The scorer named by ``meta`` (``model.json["ood"]``) in ``folder``, or None when there is none.

    Raises ``error`` when the file is missing, damaged or not the one ``model.json`` names."""
    from safetensors.numpy import load

    path = Path(folder) / str(meta["file"])
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"'{path}' (named by model.json's 'ood') cannot be read ({exc.strerror or exc}). "
                    f"Restore it from the run folder, or retrain.") from None
    if digest(data) != meta["blake2b"]:
        raise error(f"'{path}' is not the file model.json was written with (its blake2b differs). "
                    f"Restore both files from the same run, or retrain.")
    try:
        arrays = load(data)
        bank, reference = arrays["bank"], arrays["reference"]
    except Exception as exc:
        raise error(f"'{path}' cannot be read as graftkit's unknown-detection data ({exc}). Retrain.") from None
    if bank.ndim != 2 or reference.ndim != 1 or bank.shape[1] != meta["num_features"]:
        raise error(f"'{path}' holds arrays of the wrong shape (bank {bank.shape}, reference {reference.shape}). "
                    f"Retrain.")
    return OodScorer(bank, reference, int(meta["k"]), float(meta["threshold"]), meta.get("msp_threshold"))


def detection_figures(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """AUROC (in-distribution = positive, a higher score = more in-distribution) and the fraction of
    out-of-distribution images scoring at least the in-distribution 5th percentile (the false-positive
    rate at 95 % true-positive rate)."""
    from sklearn.metrics import roc_auc_score

    in_scores, out_scores = np.asarray(in_scores, np.float64), np.asarray(out_scores, np.float64)
    labels = np.r_[np.ones(len(in_scores)), np.zeros(len(out_scores))]
    cut = np.quantile(in_scores, 0.05, method="lower")  # >= 95 % of in-distribution scores are >= cut
    return {"auroc": float(roc_auc_score(labels, np.r_[in_scores, out_scores])),
            "fpr_at_95_tpr": float(np.mean(out_scores >= cut))}
