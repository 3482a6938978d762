"""Grad-CAM (Selvaraju et al., 2017) with two torch hooks: where in the image the evidence for a
class lies, from the gradient-weighted activations of the last backbone stage."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn


def grad_cam(model: nn.Module, images: torch.Tensor, class_indices: int | Sequence[int],
             layer: nn.Module | None = None) -> torch.Tensor:
    """Class activation maps for ``images`` and the given class (one, or one per image).

    Args:
        model: a classifier with ``model.backbone.stages`` (graftkit's :class:`Classifier`), in eval mode.
        images: ``(B, 3, H, W)`` normalised inputs.
        class_indices: the class whose score is explained, for all images or per image.
        layer: the module whose output is weighted (default: the last backbone stage).

    Returns:
        ``(B, H, W)`` maps in [0, 1]: ReLU of the activation channels weighted by the spatial mean of
        the class score's gradient, upsampled bilinearly to the input size, divided by their maximum
        (an all-zero map stays zero).
    """
    layer = layer if layer is not None else model.backbone.stages[-1]
    captured: dict[str, torch.Tensor] = {}

    def keep_output(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        captured["activation"] = output
        output.register_hook(lambda grad: captured.__setitem__("gradient", grad))

    handle = layer.register_forward_hook(keep_output)
    wanted = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)  # only the activations' gradients are needed, not the weights'
    try:
        with torch.enable_grad():
            x = images.detach().clone().float().requires_grad_(True)  # so gradients flow back to the layer
            logits = model(x)
            index = torch.as_tensor(class_indices, device=logits.device).reshape(-1).expand(len(x))
            logits.gather(1, index[:, None]).sum().backward()
    finally:
        handle.remove()
        for parameter, flag in zip(model.parameters(), wanted):
            parameter.requires_grad_(flag)
    activation, gradient = captured["activation"].detach(), captured["gradient"].detach()
    weights = gradient.mean(dim=(2, 3), keepdim=True)                      # (B, C, 1, 1)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True))     # (B, 1, h, w)
    cam = nn.functional.interpolate(cam.float(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return (cam / cam.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)).cpu()


def _center_crop(square: np.ndarray, size: int) -> np.ndarray:
    top = int(round((square.shape[0] - size) / 2.0))  # as torchvision's CenterCrop
    left = int(round((square.shape[1] - size) / 2.0))
    return square[top:top + size, left:left + size]


def explain_square(classifier: Any, square: np.ndarray, class_indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM of a decoded ``(S, S, 3)`` uint8 square for each class in ``class_indices``.

    Args:
        classifier: a loaded :class:`graftkit.predict.ImageClassifier`.

    Returns:
        the centre crop the model saw (``(image_size, image_size, 3)`` uint8) and the maps
        (``(len(class_indices), image_size, image_size)``, in [0, 1]) covering exactly that crop.
    """
    tensor = classifier.transform(torch.from_numpy(square).permute(2, 0, 1))[None]
    maps = grad_cam(classifier.model, tensor.expand(len(class_indices), -1, -1, -1).to(classifier.device),
                    list(class_indices)).numpy()
    return _center_crop(square, classifier.image_size), maps


def explain_images(run_dir: str | Path, rows: Sequence[dict[str, Any]], size: int = 160) -> list[dict[str, Any]]:
    """For predictions.csv rows: the model's input crop and Grad-CAM overlays for the predicted and
    the true class, as PIL images (``None`` entries where an image can no longer be read).

    The model is loaded through :func:`graftkit.load` (the run's model files); nothing is retrained.
    """
    from PIL import Image

    from ..data.decoded import decode_square
    from ..data.images import read_image_file
    from ..predict import ImageClassifier
    from .images import overlay_heatmap

    classifier = ImageClassifier.from_run(run_dir)
    resize = int(classifier.meta["preprocessing"]["resize"])
    out = []
    for row in rows:
        try:
            square = decode_square(read_image_file(Path(row["path"])), resize)
            wanted = [classifier.classes.index(row["predicted"]), classifier.classes.index(row["label"])]
        except Exception:  # unreadable now, or a class the model does not know (an edited file)
            out.append({"row": row, "input": None, "predicted": None, "true": None})
            continue
        crop, maps = explain_square(classifier, square, wanted)
        shown = lambda img: img.resize((size, size), Image.BILINEAR)  # noqa: E731
        out.append({"row": row, "input": shown(Image.fromarray(crop)),
                    "predicted": shown(overlay_heatmap(crop, maps[0])),
                    "true": shown(overlay_heatmap(crop, maps[1]))})
    return out
