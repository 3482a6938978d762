"""A faithful re-implementation of the PyTorch transfer-learning tutorial's "ConvNet as fixed
feature extractor" loop (beginner_source/transfer_learning_tutorial.py), with graftkit's backbone
and weights swapped in for ResNet-18 so that only the loop differs:

* torchvision ``ImageFolder`` + ``DataLoader`` (batch 4, shuffled), the tutorial's transforms
  (train: RandomResizedCrop(224) + flip; val: Resize(256) + CenterCrop(224)), normalised for the
  EfficientNet-Lite weights (mean = std = 0.5);
* every parameter frozen except a new linear layer; the backbone runs on every image every epoch;
* SGD(lr=1e-3, momentum=0.9), StepLR(step_size=7, gamma=0.1); the best val accuracy is kept.

Usage: python benchmarks/tutorial_baseline.py DATA_DIR EPOCHS  → prints JSON {val_accuracy, seconds}
"""
from __future__ import annotations

import copy
import json
import sys
import time

import torch
from torch import nn, optim
from torch.optim import lr_scheduler
from torchvision import datasets, transforms

from graftkit import create_backbone


def main(data_dir: str, num_epochs: int) -> None:
    torch.manual_seed(0)
    start = time.perf_counter()
    mean = std = [0.5, 0.5, 0.5]
    data_transforms = {
        "train": transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                                     transforms.ToTensor(), transforms.Normalize(mean, std)]),
        "val": transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                   transforms.ToTensor(), transforms.Normalize(mean, std)]),
    }
    image_datasets = {x: datasets.ImageFolder(f"{data_dir}/{x}", data_transforms[x]) for x in ["train", "val"]}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=4, shuffle=True, num_workers=0)
                   for x in ["train", "val"]}
    sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}

    backbone = create_backbone("efficientnet_lite0")
    model_conv = nn.Sequential(backbone, nn.Linear(backbone.num_features, len(image_datasets["train"].classes)))
    for param in backbone.parameters():
        param.requires_grad = False
    criterion = nn.CrossEntropyLoss()
    optimizer_conv = optim.SGD(model_conv[1].parameters(), lr=0.001, momentum=0.9)
    exp_lr_scheduler = lr_scheduler.StepLR(optimizer_conv, step_size=7, gamma=0.1)

    best_acc, best_wts = 0.0, copy.deepcopy(model_conv.state_dict())
    for _ in range(num_epochs):
        for phase in ["train", "val"]:
            model_conv.train() if phase == "train" else model_conv.eval()
            running_corrects = 0
            for inputs, labels in dataloaders[phase]:
                optimizer_conv.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model_conv(inputs)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer_conv.step()
                running_corrects += (outputs.argmax(1) == labels).sum().item()
            if phase == "train":
                exp_lr_scheduler.step()
            epoch_acc = running_corrects / sizes[phase]
            if phase == "val" and epoch_acc > best_acc:
                best_acc, best_wts = epoch_acc, copy.deepcopy(model_conv.state_dict())
    model_conv.load_state_dict(best_wts)
    print(json.dumps({"val_accuracy": best_acc, "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
