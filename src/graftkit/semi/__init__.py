"""Semi-supervised learning: pseudo-labelling is a data step between two calls of ``fit``."""
from .pseudo_label import (PseudoLabel, PseudoLabelling, RunPredictor, class_caps, find_unlabeled_images,
                           pseudo_label, select_pseudo_labels, with_extra_train)
from .self_training import PseudoLabelConfig, train_with_pseudo_labels

__all__ = ["PseudoLabel", "PseudoLabelConfig", "PseudoLabelling", "RunPredictor", "class_caps",
           "find_unlabeled_images", "pseudo_label", "select_pseudo_labels", "train_with_pseudo_labels",
           "with_extra_train"]
