"""resnet50.py - the trainer benchmarks' ResNet-50: torchvision's, else the same net built here.

    model, source = resnet50(num_classes=1000)

torchvision.models.resnet50 when torchvision imports; otherwise a bottleneck
ResNet-50 with the same layers, names and BatchNorm widths (53 BatchNorm2d
layers, 26,560 channels: bn1 64; layer1 3 x (64, 64, 256) + downsample 256;
layer2 4 x (128, 128, 512) + 512; layer3 6 x (256, 256, 1024) + 1024; layer4
3 x (512, 512, 2048) + 2048), so a benchmark measures the same BN work either
way. 'source' says which one was built.
"""

import torch
from torch import nn

__all__ = ["resnet50", "bn_channels"]


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        width = planes
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._layer(64, 3, 1)
        self.layer2 = self._layer(128, 4, 2)
        self.layer3 = self._layer(256, 6, 2)
        self.layer4 = self._layer(512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * Bottleneck.expansion, num_classes)

    def _layer(self, planes, blocks, stride):
        out_ch = planes * Bottleneck.expansion
        down = nn.Sequential(nn.Conv2d(self.inplanes, out_ch, 1, stride=stride, bias=False),
                             nn.BatchNorm2d(out_ch))
        layers = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = out_ch
        layers += [Bottleneck(out_ch, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def bn_channels(model):
    """[num_features] of every BatchNorm module of model, in module order."""
    return [m.num_features for m in model.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def resnet50(num_classes=1000):
    """(model, "torchvision X.Y resnet50" or "built-in copy, ..."); raises
    if the BN widths are not ResNet-50's (53 layers, 26,560 channels)."""
    try:
        import torchvision
        model = torchvision.models.resnet50(num_classes=num_classes)
        source = "torchvision %s resnet50" % torchvision.__version__.split("+")[0]
    except ImportError:
        model, source = ResNet50(num_classes), "built-in copy, torchvision not installed"
    chans = bn_channels(model)
    if len(chans) != 53 or sum(chans) != 26560:
        raise RuntimeError("%s: %d BN layers, %d channels; expected 53 and 26,560"
                           % (source, len(chans), sum(chans)))
    return model, source
