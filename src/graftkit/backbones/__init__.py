from .catalog import create_backbone, list_backbones, native_image_size
from .registry import Backbone, BackboneInfo, register_backbone

__all__ = ["Backbone", "BackboneInfo", "create_backbone", "list_backbones", "native_image_size", "register_backbone"]
