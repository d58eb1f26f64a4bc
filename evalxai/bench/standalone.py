"""Models of the benches defined with torch alone, so that a Python without evalxai (the Quantus 0.6 process of
``python -m evalxai.bench --quantus``) builds the very same module from a state dict: a ResNet-18-shaped CNN (He et
al. 2016: 7 x 7 stem, max-pool, [2, 2, 2, 2] basic blocks of 64-512 channels with BatchNorm, global average pool)
and the zoo's LeNet layout (``evalxai.models.zoo.LeNet``: the same parameter names). This file imports only torch."""
from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with BatchNorm and ReLU; a 1 x 1 strided projection on the shortcut when the shape
    changes; out = relu(f(x) + shortcut(x))."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 layout (11.2 M parameters at 10 classes) for (N, channels, H, W) inputs of any size >= 32."""

    def __init__(self, num_classes: int = 10, channels: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, cin = [], 64
        for cout, stride in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
            blocks.append(BasicBlock(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class LeNet(nn.Module):
    """``evalxai.models.zoo.LeNet`` for 1 x 28 x 28 inputs (same layers, same parameter names)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


ARCHITECTURES = {"resnet18": ResNet18, "lenet": LeNet}


def build(arch: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """The model ``arch`` (a key of ``ARCHITECTURES``) with the parameters and buffers ``state``, in eval mode."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}' (evalxai.bench.standalone): use one of {list(ARCHITECTURES)}")
    model = ARCHITECTURES[arch]()
    model.load_state_dict(state)
    return model.eval()
