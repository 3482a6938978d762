"""Scarce labels: subsample a dataset (label-efficiency curves are a workflow: graftkit.workflows)."""
from .subsample import Subsample, choose_labelled, parse_per_class, subsample

__all__ = ["Subsample", "choose_labelled", "parse_per_class", "subsample"]
