"""A user's module file, as the tests load it by ``model._target_=tests.custom_models.TinyNet``."""
from torch import nn


class TinyNet(nn.Module):
    """conv-ReLU-pool, then a linear classifier; any input size (adaptive pooling)."""

    def __init__(self, num_classes: int = 10, width: int = 8, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(4))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * 16, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def tiny_net(**kwargs) -> nn.Module:
    """A factory, as torchvision.models.vgg16 is one."""
    return TinyNet(**kwargs)


def not_a_module(**kwargs):
    return {"num_classes": kwargs.get("num_classes")}
