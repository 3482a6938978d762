"""Self-supervised pretraining on unlabelled images (SimCLR, BYOL, DINO via lightly)."""
from .methods import METHODS, build_method, build_views
from .pretrain import PretrainConfig, pretrain_ssl, probe

__all__ = ["METHODS", "PretrainConfig", "build_method", "build_views", "pretrain_ssl", "probe"]
