"""A tiny encoder/decoder/head network shaped like DenseUNet, with a hand-written parameter partition."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from covidseg.transfer.strategy_base import ModelPartition

TOY_STAGES = ("stem", "block1", "block2")


class ToyNet(nn.Module):
    """Encoder (stem, two blocks, final norm) -> ReLU -> decoder -> head, iterated like DenseUNet."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = nn.Sequential(
            OrderedDict(
                conv0=nn.Conv2d(1, 4, 3, padding=1),
                norm0=nn.BatchNorm2d(4),
                relu0=nn.ReLU(),
                block1=nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 6, 3, padding=1), norm=nn.BatchNorm2d(6))),
                block2=nn.Sequential(OrderedDict(conv=nn.Conv2d(6, 8, 3, padding=1, stride=2), norm=nn.BatchNorm2d(8))),
                norm5=nn.BatchNorm2d(8),
            )
        )
        self.decoder = nn.Sequential(nn.ConvTranspose2d(8, 4, 2, stride=2), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.encoder:
            x = layer(x)
        return self.head(self.decoder(F.relu(x)))


def names_under(model: nn.Module, *prefixes: str) -> tuple[str, ...]:
    return tuple(name for name, _ in model.named_parameters() if name.startswith(prefixes))


def toy_partition(model: ToyNet) -> ModelPartition:
    stages = {
        "stem": names_under(model, "encoder.conv0.", "encoder.norm0."),
        "block1": names_under(model, "encoder.block1."),
        "block2": names_under(model, "encoder.block2.", "encoder.norm5."),
    }
    layers = {
        "encoder.conv0": stages["stem"],
        "encoder.block1.conv": stages["block1"],
        "encoder.block2.conv": stages["block2"],
    }
    new = names_under(model, "decoder.", "head.")
    return ModelPartition(stages=stages, new=new, encoder_layers=layers)


def toy_batch(seed: int = 1, batch: int = 4, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 1, size, size, generator=generator)
    label = torch.randint(0, 3, (batch, size, size), generator=generator)
    return image, label


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter and buffer."""
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
