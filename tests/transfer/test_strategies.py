from __future__ import annotations

import io
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from covidseg.errors import ConfigError
from covidseg.transfer.freezing import batchnorm_modules, is_frozen_batchnorm, trainable_param_names
from covidseg.transfer.strategies import STRATEGIES, make_strategy
from covidseg.transfer.strategy_base import FineTuningStrategy, ModelPartition
from tests.transfer.strategy_toys import ToyNet, snapshot, toy_batch, toy_partition

#: Parameters used for every registered strategy in the protocol tests (short phases so they all happen).
PARAMS: dict[str, dict[str, Any]] = {
    "full": {},
    "linear_probe": {},
    "gradual_unfreeze": {"direction": "last_first", "epochs_per_stage": 1},
    "lp_ft": {"lp_epochs": 1, "encoder_lr_scale": 0.5},
    "auto_rgn": {},
    "ptr": {"patience": 1, "target_dim": 4, "ema_beta": 0.5, "threshold": 10.0},
}
EPOCHS = 4
STEPS_PER_EPOCH = 2
BATCH = 4


def build(name: str, **overrides: Any) -> tuple[ToyNet, FineTuningStrategy, torch.optim.Optimizer]:
    model = ToyNet(seed=0)
    strategy = make_strategy(name, partition=toy_partition(model), **{**PARAMS[name], **overrides})
    strategy.setup(model)
    optimizer = torch.optim.AdamW(strategy.param_groups(model, base_lr=0.01, weight_decay=0.01))
    return model, strategy, optimizer


def run_epochs(
    model: nn.Module, strategy: FineTuningStrategy, optimizer: torch.optim.Optimizer, epochs: range
) -> list[bool]:
    """The protocol loop of the strategies module docstring; returns on_epoch_start's flags."""
    flags = []
    for epoch in epochs:
        flags.append(strategy.on_epoch_start(epoch, model))
        model.train()
        for step in range(STEPS_PER_EPOCH):
            image, label = toy_batch(seed=100 * epoch + step, batch=BATCH)
            task_loss = F.cross_entropy(model(image), label)
            ids = torch.arange(BATCH) + BATCH * step
            loss = task_loss + strategy.extra_loss(model, task_loss, sample_ids=ids)
            optimizer.zero_grad()
            loss.backward()
            strategy.before_optimizer_step(model, optimizer)
            optimizer.step()
            strategy.after_optimizer_step(model, optimizer)
    return flags


def roundtrip(obj: Any) -> Any:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_every_registered_strategy_is_covered_here() -> None:
    assert sorted(STRATEGIES) == sorted(PARAMS)
    assert all(cls.name == name for name, cls in STRATEGIES.items())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_param_groups_hold_every_parameter_once(name: str) -> None:
    model, strategy, _ = build(name)
    groups = strategy.param_groups(model, base_lr=0.01, weight_decay=0.0)
    ids = [id(p) for group in groups for p in group["params"]]
    assert len(ids) == len(set(ids))
    model_ids = {id(p) for p in model.parameters()}
    assert model_ids <= set(ids)
    extra = set(ids) - model_ids
    assert (len(extra) > 0) == (name == "ptr")
    assert all(isinstance(group["name"], str) for group in groups)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_frozen_parameters_and_statistics_do_not_move(name: str) -> None:
    model, strategy, optimizer = build(name)
    for epoch in range(EPOCHS):
        frozen = strategy.frozen_names(epoch)
        before = snapshot(model)
        run_epochs(model, strategy, optimizer, range(epoch, epoch + 1))
        after = model.state_dict()
        assert set(trainable_param_names(model)) == {n for n, _ in model.named_parameters()} - frozen
        for param_name, _ in model.named_parameters():
            moved = not torch.equal(before[param_name], after[param_name])
            assert moved == (param_name not in frozen), (epoch, param_name)
        for bn_name, bn in batchnorm_modules(model):
            own = {f"{bn_name}.weight", f"{bn_name}.bias"}
            assert is_frozen_batchnorm(bn) == (own <= frozen)
            stats_moved = not torch.equal(before[f"{bn_name}.running_mean"], after[f"{bn_name}.running_mean"])
            assert stats_moved == (not own <= frozen), (epoch, bn_name)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_resume_continues_exactly(name: str) -> None:
    model, strategy, optimizer = build(name)
    run_epochs(model, strategy, optimizer, range(EPOCHS))
    expected_model, expected_state = snapshot(model), strategy.state_dict()

    model, strategy, optimizer = build(name)
    run_epochs(model, strategy, optimizer, range(2))
    saved = roundtrip(
        {"model": model.state_dict(), "strategy": strategy.state_dict(), "optimizer": optimizer.state_dict()}
    )
    model, strategy, optimizer = build(name)
    model.load_state_dict(saved["model"])
    strategy.load_state_dict(saved["strategy"])
    optimizer.load_state_dict(saved["optimizer"])
    assert strategy.state_dict().keys() == saved["strategy"].keys()
    assert set(trainable_param_names(model)) == {n for n, _ in model.named_parameters()} - strategy.frozen_names(1)
    run_epochs(model, strategy, optimizer, range(2, EPOCHS))

    for key, value in snapshot(model).items():
        torch.testing.assert_close(value, expected_model[key], rtol=0, atol=0, msg=key)
    assert_state_equal(strategy.state_dict(), expected_state)


def assert_state_equal(actual: Any, expected: Any) -> None:
    if isinstance(expected, torch.Tensor):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    elif isinstance(expected, dict):
        assert actual.keys() == expected.keys()
        for key in expected:
            assert_state_equal(actual[key], expected[key])
    else:
        assert actual == expected


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_state_dict_roundtrip_restores_state(name: str) -> None:
    model, strategy, optimizer = build(name)
    run_epochs(model, strategy, optimizer, range(3))
    state = roundtrip(strategy.state_dict())
    assert state["epoch"] == 2 and state["strategy"] == name
    _, fresh, _ = build(name)
    fresh.load_state_dict(state)
    assert_state_equal(fresh.state_dict(), strategy.state_dict())


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_load_state_rejects_other_strategy_or_settings(name: str) -> None:
    _, strategy, _ = build(name)
    state = strategy.state_dict()
    other = "full" if name != "full" else "linear_probe"
    with pytest.raises(ConfigError, match="trained with strategy"):
        build(other)[1].load_state_dict(state)
    changed = {**state, "hparams": {**state["hparams"], "extra_setting": 1}}
    with pytest.raises(ConfigError, match="resume with the same settings"):
        strategy.load_state_dict(changed)


def test_linear_probe_trains_only_new_layers() -> None:
    model, strategy, optimizer = build("linear_probe")
    part = toy_partition(model)
    flags = run_epochs(model, strategy, optimizer, range(3))
    assert flags == [False, False, False]
    assert set(trainable_param_names(model)) == set(part.new)
    assert all(is_frozen_batchnorm(bn) for _, bn in batchnorm_modules(model.encoder))


@pytest.mark.parametrize(
    ("direction", "order"),
    [("last_first", ["block2", "block1", "stem"]), ("first_last", ["stem", "block1", "block2"])],
)
def test_gradual_unfreeze_opens_one_stage_every_epochs_per_stage(direction: str, order: list[str]) -> None:
    model, strategy, _ = build("gradual_unfreeze", direction=direction, epochs_per_stage=2)
    part = toy_partition(model)
    assert set(trainable_param_names(model)) == set(part.new)  # after setup: decoder and head only
    flags = []
    for epoch in range(8):
        flags.append(strategy.on_epoch_start(epoch, model))
        n_open = min(3, epoch // 2)
        expected = set(part.new) | {n for stage in order[:n_open] for n in part.stages[stage]}
        assert set(trainable_param_names(model)) == expected, epoch
    assert flags == [False, False, True, False, True, False, True, False]


def test_gradual_unfreeze_uses_one_optimizer_for_the_whole_run() -> None:
    model, strategy, optimizer = build("gradual_unfreeze", epochs_per_stage=1)
    stem = "encoder.conv0.weight"
    initial = model.encoder.conv0.weight.detach().clone()
    run_epochs(model, strategy, optimizer, range(3))  # stem opens at epoch 3
    assert torch.equal(model.encoder.conv0.weight, initial)
    run_epochs(model, strategy, optimizer, range(3, 4))
    assert not torch.equal(dict(model.named_parameters())[stem], initial)


def test_lp_ft_phases_and_encoder_learning_rate() -> None:
    model, strategy, optimizer = build("lp_ft", lp_epochs=2, encoder_lr_scale=0.1)
    lrs = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert lrs == {"encoder": pytest.approx(0.001), "new": 0.01}
    part = toy_partition(model)
    flags = run_epochs(model, strategy, optimizer, range(2))
    assert set(trainable_param_names(model)) == set(part.new)
    before = snapshot(model)
    flags += run_epochs(model, strategy, optimizer, range(2, 3))
    assert flags == [False, False, True]
    assert set(trainable_param_names(model)) == {n for n, _ in model.named_parameters()}
    assert not torch.equal(before["encoder.conv0.weight"], model.encoder.conv0.weight)
    assert not any(is_frozen_batchnorm(bn) for _, bn in batchnorm_modules(model))


def test_make_strategy_errors_list_valid_choices() -> None:
    with pytest.raises(ConfigError) as info:
        make_strategy("gradual")
    assert str(sorted(STRATEGIES)) in str(info.value)
    with pytest.raises(ConfigError, match=r"no parameter\(s\) \['epochs'\]; expected some of"):
        make_strategy("lp_ft", epochs=3)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("gradual_unfreeze", {"direction": "sideways"}, "direction must be one of"),
        ("gradual_unfreeze", {"epochs_per_stage": 0}, "epochs_per_stage must be an integer >= 1"),
        ("gradual_unfreeze", {"epochs_per_stage": 1.5}, "epochs_per_stage must be an integer"),
        ("lp_ft", {"lp_epochs": -1}, "lp_epochs must be an integer >= 0"),
        ("lp_ft", {"encoder_lr_scale": 0.0}, "encoder_lr_scale must be a finite number > 0"),
        ("lp_ft", {"encoder_lr_scale": float("nan")}, "encoder_lr_scale"),
        ("auto_rgn", {"min_param_norm": -1.0}, "min_param_norm"),
        ("ptr", {"gamma": 0}, "gamma"),
        ("ptr", {"ema_beta": 1.0}, "ema_beta must be below 1"),
        ("ptr", {"target_mode": "random"}, "target_mode must be one of"),
        ("ptr", {"regression": "l3"}, "regression must be one of"),
        ("ptr", {"seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_settings_are_config_errors(name: str, params: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_strategy(name, **params)


def test_methods_before_setup_are_explained() -> None:
    with pytest.raises(RuntimeError, match="call setup"):
        make_strategy("full").param_groups(ToyNet(), 0.1, 0.0)


def test_partition_check_rejects_a_partition_of_another_model() -> None:
    model = ToyNet()
    part = toy_partition(model)
    bad = ModelPartition(stages=part.stages, new=part.new[:-1], encoder_layers=part.encoder_layers)
    with pytest.raises(ValueError, match=r"missing e.g. \['head.bias'\]"):
        make_strategy("full", partition=bad).setup(model)


# ---------------------------------------------------------------------------------------------------------
# The real model at 64 x 64


@pytest.fixture(scope="module")
def unet() -> nn.Module:
    from covidseg.model import DenseUNet, UNetConfig

    torch.manual_seed(0)
    return DenseUNet(UNetConfig())


def test_partition_from_densenet_unet(unet: nn.Module) -> None:
    from covidseg.model import STAGES

    part = ModelPartition.from_model(unet)
    part.check(unet)
    assert tuple(part.stages) == STAGES
    assert len(part.encoder_layers) == 120
    assert len(part.encoder) == 362
    assert part.new[-1] == "head.bias"
    assert "encoder.norm5.weight" in part.stages["denseblock4"]


def test_gradual_unfreeze_on_densenet_unet_step(unet: nn.Module) -> None:
    model = unet
    strategy = make_strategy("gradual_unfreeze", direction="last_first", epochs_per_stage=1)
    strategy.setup(model)
    assert sum(is_frozen_batchnorm(bn) for _, bn in batchnorm_modules(model)) == 121
    optimizer = torch.optim.SGD(strategy.param_groups(model, base_lr=0.1, weight_decay=0.0))
    assert strategy.on_epoch_start(1, model)
    assert sum(is_frozen_batchnorm(bn) for _, bn in batchnorm_modules(model)) == 121 - 33  # block 4 + norm5
    model.train()
    before = snapshot(model)
    image, label = torch.randn(2, 1, 64, 64), torch.randint(0, 3, (2, 64, 64))
    optimizer.zero_grad()
    F.cross_entropy(model(image), label).backward()
    optimizer.step()
    after = model.state_dict()
    for name in ("encoder.denseblock4.denselayer16.layers.conv2.weight", "encoder.norm5.running_var"):
        assert not torch.equal(before[name], after[name]), name
    for name in ("encoder.transition3.conv.weight", "encoder.denseblock3.denselayer1.layers.norm1.running_mean"):
        assert torch.equal(before[name], after[name]), name
