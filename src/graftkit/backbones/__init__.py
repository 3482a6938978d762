from .registry import Backbone, BackboneInfo, create_backbone, list_backbones, register_backbone

__all__ = ["Backbone", "BackboneInfo", "create_backbone", "list_backbones", "register_backbone"]
