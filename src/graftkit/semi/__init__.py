"""Semi-supervised learning: pseudo-labelling is a data step between two calls of ``fit``
(the rounds themselves are a workflow: ``graftkit.workflows.self_training``)."""
from ..data import find_unlabeled_images
from .pseudo_label import (PseudoLabel, PseudoLabelling, RunPredictor, class_caps, pseudo_label,
                           select_pseudo_labels, with_extra_train)

__all__ = ["PseudoLabel", "PseudoLabelling", "RunPredictor", "class_caps", "find_unlabeled_images",
           "pseudo_label", "select_pseudo_labels", "with_extra_train"]
