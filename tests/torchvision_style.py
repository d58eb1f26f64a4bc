"""Small, faithful re-implementations of torchvision's classification architectures (torchvision cannot be
installed next to the CPU torch wheel here, see DESIGN.md section 5).

The classes keep torchvision's module structure, attribute names and forward code — in-place ReLUs
(``nn.ReLU(inplace=True)``), ``out += identity`` in the ResNet blocks, ``downsample = Sequential(conv1x1,
BatchNorm)``, ``torch.flatten(x, 1)``, DenseNet's list-of-features ``torch.cat`` with pre-activation BatchNorm
and the functional ``F.relu(features, inplace=True)`` / ``F.adaptive_avg_pool2d`` head, MobileNet-V2's
``ConvBNReLU`` with ``nn.ReLU6(inplace=True)`` and ``x + self.conv(x)`` — so that what the LRP engine meets
here is what it meets on ``torchvision.models``. Only the sizes are parameters (channel widths, blocks,
classifier width), so tests can build tiny versions that run in milliseconds on 32x32 inputs.

Helpers for the tests: ``randomize_batchnorm`` (non-trivial running statistics and affine parameters, so that
BatchNorm merging matters), ``randomize_biases``, ``hand_merge_batchnorm`` (an independent, float64 fold of
every BatchNorm that directly follows a conv/linear layer) and ``without_inplace`` (the same weights with every
``inplace=True`` switched off).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

# ---------------------------------------------------------------------------------------------------- ResNet


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, groups=groups,
                     bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution"""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion: int = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("Dilation > 1 not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    expansion: int = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1,
                 norm_layer=None):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.downsample is not None:
            identity = self.downsample(x)

        out += identity
        out = self.relu(out)

        return out


class ResNet(nn.Module):
    """torchvision's ResNet; ``width`` is the channel count of layer1 (64 in torchvision)."""

    def __init__(self, block, layers, num_classes=1000, zero_init_residual=False, groups=1, width_per_group=64,
                 replace_stride_with_dilation=None, norm_layer=None, width=64):
        super().__init__()
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        self._norm_layer = norm_layer

        self.inplanes = width
        self.dilation = 1
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3:
            raise ValueError("replace_stride_with_dilation should be None or a 3-element tuple, "
                             f"got {replace_stride_with_dilation}")
        self.groups = groups
        self.base_width = width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2, dilate=replace_stride_with_dilation[0])
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2, dilate=replace_stride_with_dilation[1])
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2, dilate=replace_stride_with_dilation[2])
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck) and m.bn3.weight is not None:
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock) and m.bn2.weight is not None:
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                norm_layer(planes * block.expansion),
            )

        layers = []
        layers.append(block(self.inplanes, planes, stride, downsample, self.groups, self.base_width,
                            previous_dilation, norm_layer))
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                                dilation=self.dilation, norm_layer=norm_layer))

        return nn.Sequential(*layers)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)

        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)

        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)

        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def resnet(block: str = "basic", layers=(2, 2, 2, 2), width: int = 64, num_classes: int = 1000) -> ResNet:
    """resnet18 is ``resnet("basic", (2, 2, 2, 2))``, resnet50 ``resnet("bottleneck", (3, 4, 6, 3))``."""
    blocks = {"basic": BasicBlock, "bottleneck": Bottleneck}
    return ResNet(blocks[block], list(layers), num_classes=num_classes, width=width)


# ---------------------------------------------------------------------------------------------------- VGG


class VGG(nn.Module):
    """torchvision's VGG; ``hidden`` is the classifier width (4096), ``pool`` the adaptive pool side (7)."""

    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5, hidden: int = 4096, pool: int = 7, last_channels: int = 512):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((pool, pool))
        self.classifier = nn.Sequential(
            nn.Linear(last_channels * pool * pool, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x


def make_layers(cfg, batch_norm: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
        else:
            conv2d = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)
            if batch_norm:
                layers += [conv2d, nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
            else:
                layers += [conv2d, nn.ReLU(inplace=True)]
            in_channels = v
    return nn.Sequential(*layers)


CFG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def vgg16_bn(width: int = 64, hidden: int = 4096, pool: int = 7, num_classes: int = 1000) -> VGG:
    """VGG-16 (configuration "D") with batch norm; channel counts scaled by ``width / 64``."""
    cfg = [v if v == "M" else max(1, v * width // 64) for v in CFG_D]
    return VGG(make_layers(cfg, batch_norm=True), num_classes=num_classes, hidden=hidden, pool=pool,
               last_channels=cfg[-2])


# ---------------------------------------------------------------------------------------------------- DenseNet


class _DenseLayer(nn.Module):
    def __init__(self, num_input_features, growth_rate, bn_size, drop_rate, memory_efficient=False):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, stride=1, bias=False)

        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, stride=1, padding=1, bias=False)

        self.drop_rate = float(drop_rate)
        self.memory_efficient = memory_efficient

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        concated_features = torch.cat(inputs, 1)
        bottleneck_output = self.conv1(self.relu1(self.norm1(concated_features)))
        return bottleneck_output

    def any_requires_grad(self, input: list[Tensor]) -> bool:
        for tensor in input:
            if tensor.requires_grad:
                return True
        return False

    def forward(self, input):  # noqa: A002 - torchvision's name
        if isinstance(input, Tensor):
            prev_features = [input]
        else:
            prev_features = input

        if self.memory_efficient and self.any_requires_grad(prev_features):
            raise NotImplementedError("the checkpointed (memory_efficient) path is not reproduced here")

        bottleneck_output = self.bn_function(prev_features)
        new_features = self.conv2(self.relu2(self.norm2(bottleneck_output)))
        if self.drop_rate > 0:
            new_features = F.dropout(new_features, p=self.drop_rate, training=self.training)
        return new_features


class _DenseBlock(nn.ModuleDict):
    _version = 2

    def __init__(self, num_layers, num_input_features, bn_size, growth_rate, drop_rate, memory_efficient=False):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(
                num_input_features + i * growth_rate,
                growth_rate=growth_rate,
                bn_size=bn_size,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
            )
            self.add_module("denselayer%d" % (i + 1), layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for _name, layer in self.items():
            new_features = layer(features)
            features.append(new_features)
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    def __init__(self, num_input_features: int, num_output_features: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(num_input_features)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(num_input_features, num_output_features, kernel_size=1, stride=1, bias=False)
        self.pool = nn.AvgPool2d(kernel_size=2, stride=2)


class DenseNet(nn.Module):
    """torchvision's DenseNet (densenet121 = growth 32, blocks (6, 12, 24, 16), 64 initial features)."""

    def __init__(self, growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64, bn_size=4, drop_rate=0,
                 num_classes=1000, memory_efficient=False):
        super().__init__()

        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(num_init_features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
                ]
            )
        )

        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            block = _DenseBlock(
                num_layers=num_layers,
                num_input_features=num_features,
                bn_size=bn_size,
                growth_rate=growth_rate,
                drop_rate=drop_rate,
                memory_efficient=memory_efficient,
            )
            self.features.add_module("denseblock%d" % (i + 1), block)
            num_features = num_features + num_layers * growth_rate
            if i != len(block_config) - 1:
                trans = _Transition(num_input_features=num_features, num_output_features=num_features // 2)
                self.features.add_module("transition%d" % (i + 1), trans)
                num_features = num_features // 2

        self.features.add_module("norm5", nn.BatchNorm2d(num_features))

        self.classifier = nn.Linear(num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


class _DenseNetOutOfPlace(DenseNet):
    """DenseNet whose functional head ReLU runs out of place (see ``without_inplace``)."""

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=False)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        out = self.classifier(out)
        return out


def densenet(growth_rate: int = 32, block_config=(6, 12, 24, 16), num_init_features: int = 64, bn_size: int = 4,
             num_classes: int = 1000) -> DenseNet:
    return DenseNet(growth_rate, tuple(block_config), num_init_features, bn_size, num_classes=num_classes)


# ---------------------------------------------------------------------------------------------------- MobileNet-V2


def _make_divisible(v: float, divisor: int, min_value: int | None = None) -> int:
    """Rounds channel counts to a multiple of ``divisor`` (from the original TensorFlow repository)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNActivation(nn.Sequential):
    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1, norm_layer=None,
                 activation_layer=None, dilation=1):
        padding = (kernel_size - 1) // 2 * dilation
        if norm_layer is None:
            norm_layer = nn.BatchNorm2d
        if activation_layer is None:
            activation_layer = nn.ReLU6
        super().__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, dilation=dilation, groups=groups,
                      bias=False),
            norm_layer(out_planes),
            activation_layer(inplace=True),
        )
        self.out_channels = out_planes


ConvBNReLU = ConvBNActivation


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio, norm_layer=None, activation_layer=None):
        super().__init__()
        self.stride = stride
        if stride not in [1, 2]:
            raise ValueError(f"stride should be 1 or 2 instead of {stride}")

        if norm_layer is None:
            norm_layer = nn.BatchNorm2d

        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup

        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1, norm_layer=norm_layer,
                                     activation_layer=activation_layer))
        layers.extend(
            [
                ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, norm_layer=norm_layer,
                           activation_layer=activation_layer),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                norm_layer(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        else:
            return self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2; ``last_channel`` (1280) and ``activation_layer`` (ReLU6) are parameters here."""

    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8,
                 block=None, norm_layer=None, dropout=0.2, last_channel=1280, activation_layer=None):
        super().__init__()

        if block is None:
            block = InvertedResidual

        if norm_layer is None:
            norm_layer = nn.BatchNorm2d

        input_channel = 32

        if inverted_residual_setting is None:
            inverted_residual_setting = [
                [1, 16, 1, 1],
                [6, 24, 2, 2],
                [6, 32, 3, 2],
                [6, 64, 4, 2],
                [6, 96, 3, 1],
                [6, 160, 3, 2],
                [6, 320, 1, 1],
            ]

        if len(inverted_residual_setting) == 0 or len(inverted_residual_setting[0]) != 4:
            raise ValueError(f"inverted_residual_setting should be non-empty or a 4-element list, "
                             f"got {inverted_residual_setting}")

        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [
            ConvBNReLU(3, input_channel, stride=2, norm_layer=norm_layer, activation_layer=activation_layer)
        ]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                features.append(block(input_channel, output_channel, stride, expand_ratio=t, norm_layer=norm_layer,
                                      activation_layer=activation_layer))
                input_channel = output_channel
        features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1, norm_layer=norm_layer,
                                   activation_layer=activation_layer))
        self.features = nn.Sequential(*features)

        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(self.last_channel, num_classes),
        )

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _forward_impl(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = nn.functional.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        x = self.classifier(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self._forward_impl(x)


def mobilenet_v2(width_mult: float = 1.0, inverted_residual_setting=None, round_nearest: int = 8,
                 last_channel: int = 1280, num_classes: int = 1000, activation_layer=None) -> MobileNetV2:
    """MobileNet-V2; ``activation_layer=nn.ReLU`` builds the plain-ReLU variant (torchvision: ReLU6)."""
    return MobileNetV2(num_classes=num_classes, width_mult=width_mult,
                       inverted_residual_setting=inverted_residual_setting, round_nearest=round_nearest,
                       last_channel=last_channel, activation_layer=activation_layer)


# ---------------------------------------------------------------------------------------------------- helpers

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0, x: torch.Tensor | None = None) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters (in place; returns the model).

    gamma ~ U(0.5, 1.5) with about one in five negative, beta ~ 0.3 N(0, 1). Running statistics: with a
    calibration batch ``x``, each BatchNorm's input is measured on it (one eval-mode forward, front to back, so
    every BatchNorm sees the already randomised ones before it) and the statistics are set off from the measured
    ones, mean + 0.3 std N(0, 1) and var U(0.5, 2): like a trained net, activations stay of order one and depend
    on the input, yet no BatchNorm is an identity and none matches its data. Without ``x``: mean ~ 0.3 N(0, 1),
    var ~ U(0.3, 2).
    """
    g = torch.Generator().manual_seed(seed)
    kw = {"generator": g, "dtype": torch.float64}

    def randomize(m, inp=None):
        n = m.num_features
        if m.track_running_stats:
            if inp is None:
                mean, var = 0.3 * torch.randn(n, **kw), 0.3 + 1.7 * torch.rand(n, **kw)
            else:
                a = inp.detach().double().transpose(0, 1).reshape(n, -1)
                mu, v = a.mean(1), a.var(1, unbiased=False).clamp(min=1e-12)
                mean, var = mu + 0.3 * v.sqrt() * torch.randn(n, **kw), v * (0.5 + 1.5 * torch.rand(n, **kw))
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
        if m.affine:
            sign = torch.where(torch.rand(n, **kw) < 0.2, -1.0, 1.0)
            m.weight.copy_(sign * (0.5 + torch.rand(n, **kw)))
            m.bias.copy_(0.3 * torch.randn(n, **kw))

    bns = [m for m in model.modules() if isinstance(m, _BATCHNORMS)]
    if x is None:
        for m in bns:
            randomize(m)
        return model
    handles = [m.register_forward_pre_hook(lambda m, args: randomize(m, args[0])) for m in bns]
    training = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        model(x.to(next(model.parameters()).dtype))
    finally:
        for h in handles:
            h.remove()
        for m, mode in training:
            m.training = mode
    return model


@torch.no_grad()
def randomize_biases(model: nn.Module, seed: int = 0, scale: float = 0.1) -> nn.Module:
    """Fill the biases of every conv/linear layer with ``scale * N(0, 1)`` (torchvision initialises them to 0)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _LINEAR) and m.bias is not None:
            m.bias.copy_(scale * torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    return model


def mergeable_batchnorms(model: nn.Module) -> list[tuple[str, str]]:
    """(layer name, BatchNorm name) for every BatchNorm whose input is the output of a conv/linear module that
    feeds nothing else (found on a torch.fx trace). BatchNorms after ``torch.cat``, a ReLU, an addition, ... or
    after a layer whose output is also used elsewhere are left out: folding those would change the function."""
    graph = fx.Tracer().trace(model)
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(model.get_submodule(node.target), _BATCHNORMS):
            continue
        src = node.args[0]
        if (isinstance(src, fx.Node) and src.op == "call_module" and len(src.users) == 1
                and isinstance(model.get_submodule(src.target), _LINEAR)):
            pairs.append((str(src.target), str(node.target)))
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def hand_merge_batchnorm(model: nn.Module) -> nn.Module:
    """A deep copy in which every BatchNorm that directly follows a conv/linear layer (``mergeable_batchnorms``)
    is folded into that layer and replaced by ``nn.Identity``; every other BatchNorm stays as it is.

    In float64: W' = W gamma / sqrt(var + eps), b' = (b - mean) gamma / sqrt(var + eps) + beta (eval mode), then
    cast back to the layer's dtype. A bias-free layer gets a bias.
    """
    merged = copy.deepcopy(model)
    for layer_name, bn_name in mergeable_batchnorms(model):
        layer, bn = merged.get_submodule(layer_name), merged.get_submodule(bn_name)
        dtype = layer.weight.dtype
        w = layer.weight.detach().double()
        b = torch.zeros(w.shape[0], dtype=torch.float64) if layer.bias is None else layer.bias.detach().double()
        mean, var = bn.running_mean.double(), bn.running_var.double()
        gamma = bn.weight.double() if bn.affine else torch.ones_like(mean)
        beta = bn.bias.double() if bn.affine else torch.zeros_like(mean)
        scale = gamma / torch.sqrt(var + bn.eps)
        w_new = w * scale.view(-1, *[1] * (w.dim() - 1))
        b_new = (b - mean) * scale + beta
        layer.weight = nn.Parameter(w_new.to(dtype), requires_grad=layer.weight.requires_grad)
        layer.bias = nn.Parameter(b_new.to(dtype), requires_grad=layer.weight.requires_grad)
        _set_submodule(merged, bn_name, nn.Identity())
    return merged


def without_inplace(model: nn.Module) -> nn.Module:
    """A deep copy with the same weights in which every ``inplace=True`` is off: module flags (ReLU, ReLU6,
    Dropout, ...) and DenseNet's functional ``F.relu(features, inplace=True)``. (ResNet's ``out += identity`` is
    an augmented assignment, not an ``inplace`` flag, and stays.)"""
    copied = copy.deepcopy(model)
    for m in copied.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    if type(copied) is DenseNet:
        copied.__class__ = _DenseNetOutOfPlace
    return copied


def count_inplace(model: nn.Module) -> int:
    """Number of in-place flags set (modules, plus DenseNet's functional head ReLU)."""
    n = sum(1 for m in model.modules() if getattr(m, "inplace", None) is True)
    return n + (type(model) is DenseNet)
