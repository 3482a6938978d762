"""Tools for experiments on scarce labels: subsample a dataset, measure accuracy against labels."""
from .label_efficiency import DEFAULT_BUDGET, label_efficiency, mean_interval, plot_label_efficiency
from .subsample import Subsample, choose_labelled, parse_per_class, subsample

__all__ = ["DEFAULT_BUDGET", "Subsample", "choose_labelled", "label_efficiency", "mean_interval",
           "parse_per_class", "plot_label_efficiency", "subsample"]
