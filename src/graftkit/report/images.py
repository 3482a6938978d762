"""Images embedded in a report: data URIs, thumbnails of image files, heat-map overlays."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
from PIL import Image


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def png_uri(png: bytes) -> str:
    return data_uri(png, "image/png")


def jpeg_uri(image: Image.Image, quality: int = 82) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=quality, optimize=True)
    return data_uri(buffer.getvalue(), "image/jpeg")


def thumbnail(path: str | Path, size: int = 160) -> Image.Image | None:
    """The centred square of an image file at ``size`` pixels, as training saw it; None if unreadable."""
    from ..data.images import load_image, read_image_file, resize_center_square

    try:  # a regular file of bounded size only: predictions.csv may have been edited
        return resize_center_square(load_image(io.BytesIO(read_image_file(Path(path))), min_size=size), size)
    except Exception:  # moved, deleted or unreadable since training: the report says so instead
        return None


def overlay_heatmap(rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """Blend a ``(H, W)`` map in [0, 1] (jet colours) over a ``(H, W, 3)`` uint8 image."""
    from matplotlib import colormaps

    colours = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3] * 255.0
    blended = (1 - alpha) * rgb.astype(np.float64) + alpha * colours
    return Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")
