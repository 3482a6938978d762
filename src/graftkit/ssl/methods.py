"""SimCLR, BYOL and DINO around a graftkit backbone, with lightly's losses, heads and view transforms.

Each method is a small module: ``forward(views, epoch)`` returns the loss of one batch of views and
``after_step(progress)`` updates momentum encoders. The backbone is the one being pretrained; its
``state_dict`` is what ``graft pretrain`` saves.
"""
from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import nn

from ..backbones import Backbone
from ..errors import ConfigError

METHODS = ("simclr", "byol", "dino")


def require_lightly():
    """Import lightly, or say how to install it."""
    try:
        import lightly.loss  # noqa: F401
        import lightly.models.modules  # noqa: F401
        import lightly.transforms  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"self-supervised pretraining needs the 'lightly' package ({exc}): "
                          f"pip install 'graftkit[ssl]' (or: pip install --no-deps lightly lightning-utilities "
                          f"hydra-core)") from None
    import lightly

    return lightly


class SimCLR(nn.Module):
    """Two views, a projection head, NT-Xent over the batch (Chen et al. 2020)."""

    def __init__(self, backbone: Backbone, temperature: float = 0.2) -> None:
        super().__init__()
        require_lightly()
        from lightly.loss import NTXentLoss
        from lightly.models.modules import SimCLRProjectionHead

        self.backbone = backbone
        self.projection = SimCLRProjectionHead(backbone.num_features, 512, 128)
        self.criterion = NTXentLoss(temperature=temperature)

    def forward(self, views: Sequence[torch.Tensor], epoch: int = 0) -> torch.Tensor:
        z0, z1 = (self.projection(self.backbone(v)) for v in views[:2])
        return self.criterion(z0, z1)

    def after_step(self, progress: float) -> None:
        pass


class BYOL(nn.Module):
    """Online network predicts a momentum target's projection of the other view (Grill et al. 2020)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        require_lightly()
        from lightly.loss import NegativeCosineSimilarity
        from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = backbone
        self.projection = BYOLProjectionHead(backbone.num_features, 1024, 256)
        self.prediction = BYOLPredictionHead(256, 1024, 256)
        self.backbone_momentum = copy.deepcopy(backbone)
        self.projection_momentum = copy.deepcopy(self.projection)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_momentum)
        self.criterion = NegativeCosineSimilarity()

    def forward(self, views: Sequence[torch.Tensor], epoch: int = 0) -> torch.Tensor:
        x0, x1 = views[:2]
        p0, p1 = (self.prediction(self.projection(self.backbone(x))) for x in (x0, x1))
        with torch.no_grad():
            z0, z1 = (self.projection_momentum(self.backbone_momentum(x)) for x in (x0, x1))
        return 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))

    def after_step(self, progress: float) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(round(progress * 1000), 1000, 0.99, 1.0)
        update_momentum(self.backbone, self.backbone_momentum, m)
        update_momentum(self.projection, self.projection_momentum, m)


class DINO(nn.Module):
    """Self-distillation: a student matches a centred, sharpened momentum teacher (Caron et al. 2021)."""

    def __init__(self, backbone: Backbone, output_dim: int = 2048, warmup_epochs: int = 5) -> None:
        super().__init__()
        require_lightly()
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.backbone = backbone
        self.head = DINOProjectionHead(backbone.num_features, 512, 64, output_dim)
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(backbone.num_features, 512, 64, output_dim)
        self.teacher_head.load_state_dict(self.head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)
        self.criterion = DINOLoss(output_dim=output_dim, warmup_teacher_temp_epochs=warmup_epochs)

    def forward(self, views: Sequence[torch.Tensor], epoch: int = 0) -> torch.Tensor:
        global_views = views[:2]  # the teacher sees only the two large crops
        with torch.no_grad():
            teacher = [self.teacher_head(self.teacher_backbone(v)) for v in global_views]
        student = [self.head(self.backbone(v)) for v in views]
        return self.criterion(teacher, student, epoch=epoch)

    def after_step(self, progress: float) -> None:
        from lightly.models.utils import update_momentum
        from lightly.utils.scheduler import cosine_schedule

        m = cosine_schedule(round(progress * 1000), 1000, 0.996, 1.0)
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)


def build_method(method: str, backbone: Backbone, epochs: int = 10) -> nn.Module:
    if method == "simclr":
        return SimCLR(backbone)
    if method == "byol":
        return BYOL(backbone)
    if method == "dino":
        return DINO(backbone, warmup_epochs=max(1, min(5, epochs // 3)))
    raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def build_views(method: str, image_size: int, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """lightly's view transform for ``method``: a PIL image → a list of ``(3, H, W)`` tensors."""
    require_lightly()
    from lightly import transforms as lt

    normalize = {"mean": list(mean), "std": list(std)}
    if method == "simclr":
        return lt.SimCLRTransform(input_size=image_size, min_scale=0.2, normalize=normalize)
    if method == "byol":
        return lt.BYOLTransform(view_1_transform=lt.BYOLView1Transform(input_size=image_size, normalize=normalize),
                                view_2_transform=lt.BYOLView2Transform(input_size=image_size, normalize=normalize))
    if method == "dino":
        return lt.DINOTransform(global_crop_size=image_size, local_crop_size=max(16, round(image_size * 96 / 224)),
                                n_local_views=2, normalize=normalize)
    raise ConfigError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
