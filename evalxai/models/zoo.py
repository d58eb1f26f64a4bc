"""Architectures, each built for an input shape (C, H, W) and a number of classes.

``mlp`` (dense ReLU), ``lenet`` (conv, ReLU, max-pool, linear), ``vgg_bn`` (conv + BatchNorm +
LocalResponseNorm + average pooling) and ``resnet_small`` (residual blocks whose ``forward`` adds the skip
with a plain ``+``, global average pooling, linear: CAM-ready).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from evalxai.models.text_transformer import TextTransformer
from evalxai.models.vit import ViT

if TYPE_CHECKING:
    from evalxai.data.base import Dataset


class MLP(nn.Sequential):
    def __init__(self, input_shape, num_classes=10, hidden=(256, 128), bias=True):
        dims = [int(torch.tensor(input_shape).prod()), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for i, o in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(i, o, bias=bias), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], num_classes, bias=bias))
        super().__init__(*layers)


class LeNet(nn.Module):
    """conv-ReLU-maxpool x 2, then two dense layers; ``bias=False`` gives the bias-free ReLU net on which LRP-0
    and z+ conserve relevance exactly."""

    def __init__(self, input_shape, num_classes=10, channels=(16, 32), hidden=128, bias=True):
        super().__init__()
        c, h, w = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, channels[0], 5, padding=2, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels[0], channels[1], 5, padding=2, bias=bias), nn.ReLU(), nn.MaxPool2d(2),
        )
        flat = channels[1] * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden, bias=bias), nn.ReLU(),
                                        nn.Linear(hidden, num_classes, bias=bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class VGGBN(nn.Module):
    def __init__(self, input_shape, num_classes=10, channels=(16, 32), hidden=128):
        super().__init__()
        c, h, w = input_shape
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.LocalResponseNorm(5), nn.AvgPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.LocalResponseNorm(5), nn.AvgPool2d(2),
        )
        flat = c2 * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, skip added with a plain ``+`` (1x1 conv + BN when the shape changes)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class ResNetSmall(nn.Module):
    def __init__(self, input_shape, num_classes=10, channels=(16, 32)):
        super().__init__()
        c = input_shape[0]
        c1, c2 = channels
        self.stem = nn.Sequential(nn.Conv2d(c, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU())
        self.layer1 = BasicBlock(c1, c1)
        self.layer2 = BasicBlock(c1, c2, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layer2(self.layer1(self.stem(x))))))


MODELS = {"mlp": MLP, "lenet": LeNet, "vgg_bn": VGGBN, "resnet_small": ResNetSmall}
MODELS["vit_tiny"] = ViT  # evalxai/models/vit.py
MODELS["text_transformer"] = TextTransformer  # evalxai/models/text_transformer.py: token ids (T,), a text dataset


def build_model(name: str, input_shape: Sequence[int], num_classes: int = 10, **arch: Any) -> nn.Module:
    """Instantiate an architecture by its config name (``conf/model/<name>.yaml``), untrained.

    name: a ``MODELS`` key (``mlp``, ``lenet``, ``resnet_small``, ``vgg_bn``, ``vit_tiny``).
    input_shape: one input's shape, (C, H, W).
    num_classes: the number of logits.
    arch: the config's ``arch`` fields (widths, depths, ...), lists read as tuples.

    Example:
        >>> build_model("mlp", (1, 8, 8), num_classes=10)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """
    if name not in MODELS:
        raise KeyError(f"unknown model '{name}': choose one of {sorted(MODELS)}")
    arch = {k: tuple(v) if isinstance(v, list) else v for k, v in arch.items()}
    return MODELS[name](tuple(input_shape), num_classes, **arch)


def data_inputs(name: str | None, dataset: Dataset) -> dict:
    """What a model takes from its dataset besides shape and classes: for text the tokenizer's ``vocab_size`` and
    ``pad_id``; nothing for images. A zoo model ``name`` of another modality than the dataset's is refused (None:
    a model from elsewhere, not checked here)."""
    have = getattr(dataset, "modality", "image")
    if name is not None:
        if name not in MODELS:
            raise KeyError(f"unknown model '{name}': choose one of {sorted(MODELS)}")
        want = getattr(MODELS[name], "modality", "image")
        if want != have:
            fits = sorted(k for k, v in MODELS.items() if getattr(v, "modality", "image") == have)
            raise ValueError(f"model={name} takes {want} inputs but dataset={dataset.name} is {have}: choose one of "
                             f"{fits} (or model=huggingface / custom) for it")
    if have != "text":
        return {}
    return {"vocab_size": len(dataset.tokenizer.vocab), "pad_id": int(dataset.tokenizer.pad_id)}
