from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covidseg.transfer.freezing import (
    batchnorm_modules,
    freeze,
    is_frozen_batchnorm,
    set_trainable,
    trainable_param_names,
    unfreeze,
)
from tests.transfer.strategy_toys import ToyNet, names_under, snapshot, toy_batch

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int = 1) -> None:
    image, label = toy_batch(seed)
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(image), label).backward()
    optimizer.step()


def changed(before: dict[str, torch.Tensor], model: nn.Module, name: str) -> bool:
    return not torch.equal(before[name], model.state_dict()[name])


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)


def test_frozen_encoder_keeps_params_and_bn_statistics_after_train_and_step() -> None:
    model = ToyNet()
    optimizer = sgd(model)
    train_step(model, optimizer)  # momentum buffers exist for every parameter
    freeze(model.encoder)
    model.train()
    assert all(not bn.training for _, bn in batchnorm_modules(model.encoder))
    before = snapshot(model)
    for seed in (2, 3):
        train_step(model, optimizer, seed)
    for name in before:
        if name.startswith("encoder."):
            assert not changed(before, model, name), name
    for name in ("decoder.0.weight", "decoder.1.weight", "decoder.1.running_mean", "head.weight"):
        assert changed(before, model, name), name
    assert model.decoder[1].num_batches_tracked.item() == before["decoder.1.num_batches_tracked"].item() + 2
    assert all(not bn.training for _, bn in batchnorm_modules(model.encoder))
    assert model.decoder[1].training


def test_frozen_encoder_normalises_with_running_statistics_in_train_mode() -> None:
    model = ToyNet()
    image, _ = toy_batch()
    freeze(model.encoder)
    model.train()
    train_out = model.encoder(image)
    model.eval()
    torch.testing.assert_close(train_out, model.encoder(image), rtol=0, atol=0)


def test_unfreeze_restores_training_of_params_and_statistics() -> None:
    model = ToyNet()
    optimizer = sgd(model)
    freeze(model.encoder)
    unfreeze(model.encoder)
    assert not any(is_frozen_batchnorm(bn) for _, bn in batchnorm_modules(model))
    assert set(trainable_param_names(model)) == {name for name, _ in model.named_parameters()}
    before = snapshot(model)
    train_step(model, optimizer)
    for name in ("encoder.conv0.weight", "encoder.norm0.running_mean", "encoder.norm5.running_var"):
        assert changed(before, model, name), name
    assert model.encoder.norm0.num_batches_tracked.item() == 1


def test_unfreeze_mode_is_given_to_released_batchnorm() -> None:
    bn = nn.BatchNorm2d(2)
    freeze(bn)
    unfreeze(bn, mode=False)
    assert not bn.training and not is_frozen_batchnorm(bn)
    assert bn.train().training


def test_set_trainable_syncs_batchnorm_with_its_own_parameters() -> None:
    model = ToyNet()
    set_trainable(model, names_under(model, "encoder.block1."), False)
    assert is_frozen_batchnorm(model.encoder.block1.norm)
    assert not is_frozen_batchnorm(model.encoder.norm0)
    assert not is_frozen_batchnorm(model.encoder.block2.norm)
    # A BatchNorm with one trainable parameter keeps updating its statistics.
    set_trainable(model, ["encoder.block1.norm.bias"], True)
    assert not is_frozen_batchnorm(model.encoder.block1.norm)
    assert model.encoder.block1.norm.training == model.training
    set_trainable(model, ["encoder.block1.norm.bias"], False)
    assert is_frozen_batchnorm(model.encoder.block1.norm)
    frozen = set(names_under(model, "encoder.block1."))
    assert set(trainable_param_names(model)) == {n for n, _ in model.named_parameters()} - frozen


def test_set_trainable_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="not parameters of the model"):
        set_trainable(ToyNet(), ["encoder.nope.weight"], False)


def test_freezing_parameters_alone_drops_their_gradients() -> None:
    model = ToyNet()
    image, label = toy_batch()
    F.cross_entropy(model(image), label).backward()
    params = list(model.head.parameters())
    freeze(params)
    assert all(p.grad is None and not p.requires_grad for p in params)
    assert model.encoder.conv0.weight.grad is not None
    assert not any(is_frozen_batchnorm(bn) for _, bn in batchnorm_modules(model))
    unfreeze(params)
    assert all(p.requires_grad for p in params)


@pytest.mark.parametrize("duplicate", ["deepcopy", "pickle", "torch.save"])
def test_frozen_batchnorm_survives_copies(duplicate: str) -> None:
    model = ToyNet()
    freeze(model.encoder)
    if duplicate == "deepcopy":
        clone = copy.deepcopy(model)
    elif duplicate == "pickle":
        clone = pickle.loads(pickle.dumps(model))
    else:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        clone = torch.load(buffer, weights_only=False)  # a whole module, written by this test
    clone.train()
    assert all(is_frozen_batchnorm(bn) and not bn.training for _, bn in batchnorm_modules(clone.encoder))
    assert clone.decoder[1].training
    # The copy's override is bound to the copy, not to the original.
    clone.encoder.norm0.train()
    model.encoder.norm0.training = True
    clone.train()
    assert model.encoder.norm0.training


def test_densenet_unet_frozen_encoder_step_64px() -> None:
    from covidseg.model import DenseUNet, UNetConfig

    torch.manual_seed(0)
    model = DenseUNet(UNetConfig())
    freeze(model.encoder)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    before = snapshot(model)
    model.train()
    image = torch.randn(2, 1, 64, 64)
    label = torch.randint(0, 3, (2, 64, 64))
    optimizer.zero_grad()
    F.cross_entropy(model(image), label).backward()
    optimizer.step()
    encoder_bns = batchnorm_modules(model.encoder)
    assert len(list(encoder_bns)) == 121
    after = model.state_dict()
    for name in before:
        if name.startswith("encoder."):
            assert torch.equal(before[name], after[name]), name
    assert all(p.grad is None for p in model.encoder.parameters())
    assert not torch.equal(before["decoder.4.norm2.running_mean"], after["decoder.4.norm2.running_mean"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
