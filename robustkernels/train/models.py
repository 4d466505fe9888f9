"""Models by name: a small MLP / CNN for the embedded data, or any torchvision classifier."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["build_model"]


class MLP(nn.Module):
    """Two hidden ReLU layers on the flattened image."""

    def __init__(self, in_features: int, num_classes: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv-BN-ReLU blocks with max pooling, then a linear classifier; for small images."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 4)),
        )
        self.classifier = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def build_model(name: str, num_classes: int, input_shape: tuple[int, ...], hidden: int = 512) -> nn.Module:
    """``mlp``, ``smallcnn``, or a torchvision model name (``resnet50``, ``wide_resnet101_2``, ...).

    torchvision models are built from scratch (no weights are downloaded), with
    ``num_classes`` outputs.
    """
    if name == "mlp":
        in_features = 1
        for d in input_shape:
            in_features *= d
        return MLP(in_features, num_classes, hidden)
    if name == "smallcnn":
        return SmallCNN(input_shape[0], num_classes, width=max(16, hidden // 8))
    import torchvision

    try:
        builder = torchvision.models.get_model_builder(name)
    except ValueError:
        known = ", ".join(sorted(torchvision.models.list_models(module=torchvision.models)))
        raise ValueError(f"model must be 'mlp', 'smallcnn' or a torchvision model ({known}); got {name!r}") from None
    return builder(weights=None, num_classes=num_classes)
