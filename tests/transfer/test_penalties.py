"""Every registered penalty, checked against closed forms computed here with plain loops on a toy model."""

from __future__ import annotations

import doctest
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from covidseg.errors import ConfigError
from covidseg.transfer import penalties, penalties_base, penalties_group, penalties_sp
from covidseg.transfer.penalties import PENALTIES, make_penalty, optimizer_param_groups
from covidseg.transfer.penalties_base import NEW_LAYER_KEY, TransferPenalty, batchnorm_param_names

SP_NAMES = sorted(n for n in PENALTIES if n != "l2")
FISHER_NAMES = ("l2sp_fisher", "group_lasso_sp_fisher")
LAMBDAS = [2.0, 0.5, 1.5]  # one per encoder layer of the toy model; deliberately not monotone
DECODER_LAMBDA = 0.3
WEIGHT_LAMBDA = 0.7


class Toy(nn.Module):
    """Encoder of three conv layers (two with BatchNorm), a decoder conv with bias and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 3, 3, bias=False),
            nn.BatchNorm2d(3),
            nn.Conv2d(3, 4, 3, bias=False),
            nn.BatchNorm2d(4),
            nn.Conv2d(4, 2, 1),
        )
        self.decoder = nn.Conv2d(2, 2, 3, padding=1)
        self.head = nn.Linear(2, 3)


LAYER_OF = {
    "encoder.0.weight": 1,
    "encoder.1.weight": 1,
    "encoder.1.bias": 1,
    "encoder.2.weight": 2,
    "encoder.3.weight": 2,
    "encoder.3.bias": 2,
    "encoder.4.weight": 3,
    "encoder.4.bias": 3,
}


def make_toy(seed: int = 0, dtype: torch.dtype = torch.float64) -> Toy:
    torch.manual_seed(seed)
    model = Toy().to(dtype)
    with torch.no_grad():
        for p in model.parameters():  # BatchNorm starts at (1, 0); give it generic values too
            p.copy_(torch.randn_like(p))
    return model


def source_of(model: nn.Module, seed: int = 1) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        k: v + 0.5 * torch.randn(v.shape, generator=gen, dtype=v.dtype) if v.is_floating_point() else v.clone()
        for k, v in model.state_dict().items()
    }


def fisher_of(model: nn.Module, seed: int = 2) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.1 for n, p in model.named_parameters()}


def params_for(name: str, lambdas: list[float], fisher: dict[str, Tensor] | None, **extra: Any) -> dict[str, Any]:
    if name == "l2":
        return {"weight_lambda": WEIGHT_LAMBDA, **extra}
    if name == "l2sp":
        assert len(set(lambdas)) == 1
        return {"sp_lambda": lambdas[0], "decoder_lambda": DECODER_LAMBDA, **extra}
    kw: dict[str, Any] = {"schedule": list(lambdas), "decoder_lambda": DECODER_LAMBDA, **extra}
    if name in FISHER_NAMES:
        kw["fisher"] = fisher
    return kw


def lambdas_for(name: str) -> list[float]:
    return [0.7, 0.7, 0.7] if name == "l2sp" else list(LAMBDAS)


def build(
    name: str,
    model: nn.Module,
    source: dict[str, Tensor] | None,
    lambdas: list[float] | None = None,
    fisher: dict[str, Tensor] | None = None,
    **extra: Any,
) -> TransferPenalty:
    lambdas = lambdas_for(name) if lambdas is None else lambdas
    if fisher is None:
        fisher = fisher_of(model)
    return make_penalty(name, model, source, LAYER_OF, **params_for(name, lambdas, fisher, **extra))


def closed_form(
    name: str,
    model: nn.Module,
    source: dict[str, Tensor],
    lambdas: list[float],
    fisher: dict[str, Tensor],
    batchnorm: str = "exclude",
    decoder_lambda: float = DECODER_LAMBDA,
) -> tuple[float, dict[str, Tensor]]:
    """Value and gradient of the penalty, written out term by term."""
    bn = batchnorm_param_names(model) if batchnorm == "exclude" else set()
    value = 0.0
    grads: dict[str, Tensor] = {}
    for pname, param in model.named_parameters():
        p = param.detach()
        grads[pname] = torch.zeros_like(p)
        if pname in bn:
            continue
        if name == "l2":
            value += WEIGHT_LAMBDA * float((p * p).sum())
            grads[pname] = 2 * WEIGHT_LAMBDA * p
            continue
        src = source.get(pname)
        if pname not in LAYER_OF or src is None or src.shape != p.shape:
            value += decoder_lambda * float((p * p).sum())
            grads[pname] = 2 * decoder_lambda * p
            continue
        lam = lambdas[LAYER_OF[pname] - 1]
        if math.isinf(lam):
            continue
        d = p - src
        f = fisher[pname]
        if name in ("l2sp", "l2sp_layerwise"):
            value += lam * float((d * d).sum())
            grads[pname] = 2 * lam * d
        elif name == "l1sp":
            value += lam * float(d.abs().sum())
            grads[pname] = lam * torch.sign(d)
        elif name == "l2sp_fisher":
            value += lam * float((f * d * d).sum())
            grads[pname] = 2 * lam * f * d
        elif name in ("group_lasso_sp", "group_lasso_sp_fisher"):
            rows = [d[o] for o in range(d.shape[0])] if d.dim() >= 2 else [d]
            frows = [f[o] for o in range(f.shape[0])] if f.dim() >= 2 else [f]
            grad_rows = []
            for row, frow in zip(rows, frows, strict=True):
                s = math.sqrt(row.numel()) if name == "group_lasso_sp" else math.sqrt(float(frow.sum()))
                norm = float(row.norm())
                value += lam * s * norm
                grad_rows.append(lam * s * row / norm)
            grads[pname] = torch.stack(grad_rows) if d.dim() >= 2 else grad_rows[0]
        else:  # pragma: no cover - a new registry entry needs a closed form here
            raise AssertionError(f"no closed form for {name}")
    return value, grads


def grads_of(model: nn.Module) -> dict[str, Tensor]:
    return {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}


def test_registry_is_complete() -> None:
    assert sorted(PENALTIES) == [
        "group_lasso_sp",
        "group_lasso_sp_fisher",
        "l1sp",
        "l2",
        "l2sp",
        "l2sp_fisher",
        "l2sp_layerwise",
    ]
    for name, cls in PENALTIES.items():
        assert cls.name == name


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_value_at_source(name: str) -> None:
    model = make_toy()
    source = {k: v.clone() for k, v in model.state_dict().items()}
    if name == "l2":
        pen = build(name, model, None)
        expected = WEIGHT_LAMBDA * sum(
            float((p * p).sum())
            for n, p in model.state_dict().items()
            if n in dict(model.named_parameters()) and n not in batchnorm_param_names(model)
        )
        assert pen(model).item() == pytest.approx(expected, rel=1e-12)
        return
    pen = build(name, model, source, decoder_lambda=0.0) if name != "l2sp" else None
    if pen is None:
        pen = make_penalty(name, model, source, LAYER_OF, sp_lambda=0.7, decoder_lambda=0.0)
    value = pen(model)
    assert value.item() == 0.0
    value.backward()
    for n, g in grads_of(model).items():
        assert torch.equal(g, torch.zeros_like(g)), n  # subgradient 0 at θ = θ̄, no NaN


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_positive_after_perturbation(name: str) -> None:
    model = make_toy()
    source = {k: v.clone() for k, v in model.state_dict().items()}
    pen = build(name, model, source)
    before = pen(model).item()
    with torch.no_grad():
        model.encoder[2].weight.mul_(2.0)
    assert pen(model).item() > before


@pytest.mark.parametrize("batchnorm", ["exclude", "include"])
@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_value_and_gradient_match_closed_form(name: str, batchnorm: str) -> None:
    model = make_toy()
    source = source_of(model)
    fisher = fisher_of(model)
    lambdas = lambdas_for(name)
    pen = build(name, model, source, lambdas, fisher, batchnorm=batchnorm)
    expected, expected_grads = closed_form(name, model, source, lambdas, fisher, batchnorm)
    value = pen(model)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-10)
    value.backward()
    for n, g in grads_of(model).items():
        torch.testing.assert_close(g, expected_grads[n], rtol=1e-9, atol=1e-12, msg=n)
    terms = pen.layer_terms(model)
    assert sum(terms.values()) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("batchnorm", ["exclude", "include"])
@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_gradient_matches_finite_differences(name: str, batchnorm: str) -> None:
    """The closed-form backward agrees with central differences of the value along random directions."""
    model = make_toy()
    pen = build(name, model, source_of(model), batchnorm=batchnorm)
    model.zero_grad()
    pen(model).backward()
    params = list(model.parameters())
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    gen = torch.Generator().manual_seed(5)
    eps = 1e-6
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        with torch.no_grad():
            torch._foreach_add_(params, direction, alpha=eps)
            plus = pen(model).item()
            torch._foreach_add_(params, direction, alpha=-2 * eps)
            minus = pen(model).item()
            torch._foreach_add_(params, direction, alpha=eps)
        analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction, strict=True))
        assert (plus - minus) / (2 * eps) == pytest.approx(analytic, rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_autograd_integration(name: str) -> None:
    model = make_toy()
    pen = build(name, model, source_of(model))
    model.zero_grad()
    pen(model).backward()
    unit = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (2.5 * pen(model) + 0.0).backward()  # upstream gradient 2.5 scales every parameter gradient
    for n, p in model.named_parameters():
        if n in unit:
            torch.testing.assert_close(p.grad, 2.5 * unit[n], msg=n)
    # gradients add to those of the task loss
    model.zero_grad()
    x = torch.randn(2, 2, dtype=torch.float64)
    task = model.head(x).square().sum()
    task.backward()
    task_grad = model.head.weight.grad.clone()
    model.zero_grad()
    (model.head(x).square().sum() + pen(model)).backward()
    torch.testing.assert_close(model.head.weight.grad, task_grad + unit["head.weight"])
    # value only: no graph under no_grad or when nothing requires grad
    with torch.no_grad():
        assert pen(model).grad_fn is None
    for p in model.parameters():
        p.requires_grad_(False)
    assert pen(model).grad_fn is None
    # a partly frozen model gets gradients only where they are needed
    model.head.weight.requires_grad_(True)
    model.zero_grad()
    value = pen(model)
    value.backward()
    torch.testing.assert_close(model.head.weight.grad, unit["head.weight"])
    assert model.decoder.weight.grad is None
    with pytest.raises(RuntimeError):
        value.backward()


@pytest.mark.parametrize("name", SP_NAMES)
def test_layer_terms_by_layer(name: str) -> None:
    model = make_toy()
    source = source_of(model)
    fisher = fisher_of(model)
    lambdas = lambdas_for(name)
    pen = build(name, model, source, lambdas, fisher)
    terms = pen.layer_terms(model)
    assert sorted(terms) == [NEW_LAYER_KEY, 1, 2, 3]
    # the new-layer term alone: decoder + head with λ'
    new_only = sum(
        DECODER_LAMBDA * float(p.detach().square().sum())
        for n, p in model.named_parameters()
        if n.startswith(("decoder.", "head."))
    )
    assert terms[NEW_LAYER_KEY] == pytest.approx(new_only, rel=1e-12)
    # each layer alone: only that layer's source tensors, no new-layer term
    for layer in (1, 2, 3):
        only = {k: v for k, v in source.items() if LAYER_OF.get(k) == layer}
        alone, _ = closed_form(name, model, only, lambdas, fisher, decoder_lambda=0.0)
        assert terms[layer] == pytest.approx(alone, rel=1e-10)


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_buffers_follow_dtype_and_device(name: str) -> None:
    model = make_toy(dtype=torch.float32)
    source = {k: v.float() for k, v in source_of(model).items()}
    fisher = {k: v.float() for k, v in fisher_of(model).items()}
    pen = build(name, model, source, fisher=fisher)
    assert all(b.dtype == torch.float32 for b in pen.buffers())
    pen.to(torch.float64)
    model.to(torch.float64)
    assert all(b.dtype == torch.float64 for b in pen.buffers())
    expected, _ = closed_form(
        name,
        model,
        {k: v.double() for k, v in source.items()},
        lambdas_for(name),
        {k: v.double() for k, v in fisher.items()},
    )
    value = pen(model)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(expected, rel=1e-10)
    pen.to("meta")
    model.to("meta")
    assert all(b.device.type == "meta" for b in pen.buffers())
    assert pen(model).device.type == "meta"


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_state_dict_round_trip(name: str, tmp_path: Path) -> None:
    model = make_toy()
    source = source_of(model)
    pen = build(name, model, source)
    expected = pen(model).item()
    path = tmp_path / "penalty.pt"
    torch.save(pen.state_dict(), path)
    keys = set(torch.load(path, weights_only=True))
    if name != "l2":
        assert {f"reference.{n.replace('.', '__')}" for n in pen.sp_param_names()} <= keys
    if name in FISHER_NAMES:
        assert {f"fisher.{n.replace('.', '__')}" for n in pen.sp_param_names()} <= keys
    # a penalty built from other source weights and another Fisher takes the saved ones back
    other_source = source_of(model, seed=7) if name != "l2" else None
    other = build(name, model, other_source, fisher=fisher_of(model, seed=8))
    if name != "l2":
        assert other(model).item() != pytest.approx(expected)
    other.load_state_dict(torch.load(path, weights_only=True))
    assert other(model).item() == pytest.approx(expected, rel=1e-12)
    for n, ref in other.source_state().items():
        assert torch.equal(ref, source[n])


@pytest.mark.parametrize("name", SP_NAMES)
def test_inf_layers_are_skipped_and_reported(name: str) -> None:
    model = make_toy()
    source = source_of(model)
    fisher = fisher_of(model)
    lambdas = [math.inf] * 3 if name == "l2sp" else [math.inf, 0.5, 1.5]
    pen = build(name, model, source, lambdas, fisher)
    frozen = [1, 2, 3] if name == "l2sp" else [1]
    assert pen.frozen_layers() == frozen
    assert pen.frozen_param_names() == [
        n
        for n in ("encoder.0.weight", "encoder.2.weight", "encoder.4.weight", "encoder.4.bias")
        if LAYER_OF[n] in frozen
    ]
    expected, expected_grads = closed_form(name, model, source, lambdas, fisher)
    value = pen(model)
    assert math.isfinite(value.item())
    assert value.item() == pytest.approx(expected, rel=1e-10)
    value.backward()
    for n, g in grads_of(model).items():
        torch.testing.assert_close(g, expected_grads[n], rtol=1e-9, atol=1e-12, msg=n)
    assert not set(pen.layer_terms(model)) & set(frozen)
    # frozen tensors still count as regularized: no optimizer weight decay on them
    assert set(pen.frozen_param_names()) <= set(pen.weight_decay_free_params())


def test_l2_reports_no_frozen_layers() -> None:
    model = make_toy()
    pen = build("l2", model, None)
    assert pen.frozen_layers() == []
    assert pen.sp_param_names() == []
    assert set(pen.new_param_names()) == {n for n, _ in model.named_parameters()} - batchnorm_param_names(model)


def test_zero_lambda_layers_cost_nothing() -> None:
    model = make_toy()
    source = source_of(model)
    pen = make_penalty("l2sp_layerwise", model, source, LAYER_OF, schedule=[1.0, 0.0, 0.0], decoder_lambda=0.0)
    d = model.encoder[0].weight.detach() - source["encoder.0.weight"]
    assert pen(model).item() == pytest.approx(float((d * d).sum()), rel=1e-12)
    assert pen.layer_terms(model) == pytest.approx({0: 0.0, 1: float((d * d).sum()), 2: 0.0, 3: 0.0})


def test_unmatched_source_tensor_is_a_new_layer() -> None:
    model = make_toy()
    source = source_of(model)
    source["encoder.0.weight"] = torch.zeros(3, 3, 3, 3, dtype=torch.float64)  # e.g. an RGB stem
    del source["encoder.4.bias"]
    pen = make_penalty("l2sp_layerwise", model, source, LAYER_OF, schedule=LAMBDAS, decoder_lambda=DECODER_LAMBDA)
    assert pen.unmatched_encoder_names() == ["encoder.0.weight", "encoder.4.bias"]
    assert {"encoder.0.weight", "encoder.4.bias"} <= set(pen.new_param_names())
    expected, _ = closed_form("l2sp_layerwise", model, source, LAMBDAS, fisher_of(model))
    assert pen(model).item() == pytest.approx(expected, rel=1e-10)


def test_batchnorm_exclusion_is_by_type() -> None:
    model = make_toy()
    pen = build("l2sp_layerwise", model, source_of(model))
    assert pen.excluded_param_names() == ["encoder.1.weight", "encoder.1.bias", "encoder.3.weight", "encoder.3.bias"]
    included = build("l2sp_layerwise", model, source_of(model), batchnorm="include")
    assert included.excluded_param_names() == []
    assert len(included.sp_param_names()) == len(LAYER_OF)


def test_optimizer_param_groups_do_not_double_count(tmp_path: Path) -> None:
    model = make_toy()
    pen = build("l2sp_layerwise", model, source_of(model))
    groups = optimizer_param_groups(model, pen, weight_decay=0.1)
    by_id = {id(p): n for n, p in model.named_parameters()}
    decayed = {by_id[id(p)] for p in groups[0]["params"]}
    free = {by_id[id(p)] for p in groups[1]["params"]}
    assert decayed == batchnorm_param_names(model)
    assert free == set(pen.weight_decay_free_params())
    assert decayed | free == set(by_id.values())
    assert not decayed & free
    # behaviour: with zero loss gradients, one SGD step shrinks only the parameters outside the penalty
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    torch.optim.SGD(groups, lr=1.0).step()
    for n, p in model.named_parameters():
        factor = 0.9 if n in decayed else 1.0
        torch.testing.assert_close(p.detach(), factor * before[n], msg=n)
    assert [g["weight_decay"] for g in optimizer_param_groups(model, None, 0.1)] == [0.1]
    with pytest.raises(ConfigError):
        optimizer_param_groups(model, pen, weight_decay=-1.0)


def test_unknown_penalty_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        make_penalty("l2_sp", make_toy(), None, LAYER_OF)
    assert str(err.value) == f"unknown penalty 'l2_sp'; expected one of {sorted(PENALTIES)}"


@pytest.mark.parametrize(
    ("name", "source", "kwargs", "match"),
    [
        ("l2sp", None, {"sp_lambda": 1.0, "decoder_lambda": 0.0}, "give source_state"),
        ("l2sp", "src", {"sp_lambda": 1.0}, "takes"),
        ("l2sp", "src", {"sp_lambda": 1.0, "decoder_lambda": 0.0, "alpha": 2}, "takes"),
        ("l2sp", "src", {"sp_lambda": [1.0], "decoder_lambda": 0.0}, "sp_lambda must be a number"),
        ("l2sp", "src", {"sp_lambda": -1.0, "decoder_lambda": 0.0}, "negative"),
        ("l2sp", "src", {"sp_lambda": 1.0, "decoder_lambda": -0.1}, "decoder_lambda"),
        ("l2sp", "src", {"sp_lambda": 1.0, "decoder_lambda": math.nan}, "decoder_lambda"),
        ("l2", None, {"weight_lambda": -1.0}, "weight_lambda"),
        ("l2sp_layerwise", "src", {"schedule": [1.0, 2.0], "decoder_lambda": 0.0}, "has 2 values"),
        ("l2sp_layerwise", "src", {"schedule": 1.0, "decoder_lambda": 0.0, "batchnorm": "freeze"}, "batchnorm"),
        ("l2sp_fisher", "src", {"schedule": 1.0, "decoder_lambda": 0.0}, "takes"),
        ("l2sp_fisher", "src", {"schedule": 1.0, "decoder_lambda": 0.0, "fisher": None}, "needs fisher"),
        ("l2sp_fisher", "src", {"schedule": 1.0, "decoder_lambda": 0.0, "fisher": {}}, "no entry"),
    ],
)
def test_bad_arguments_raise_config_error(name: str, source: str | None, kwargs: dict[str, Any], match: str) -> None:
    model = make_toy()
    src = source_of(model) if source else None
    with pytest.raises(ConfigError, match=match):
        make_penalty(name, model, src, LAYER_OF, **kwargs)


def test_bad_fisher_and_layer_map() -> None:
    model = make_toy()
    source = source_of(model)
    fisher = fisher_of(model)
    fisher["encoder.2.weight"] = -fisher["encoder.2.weight"]
    with pytest.raises(ConfigError, match="negative or non-finite"):
        make_penalty("group_lasso_sp_fisher", model, source, LAYER_OF, schedule=1.0, fisher=fisher, decoder_lambda=0.0)
    fisher["encoder.2.weight"] = torch.ones(2)
    with pytest.raises(ConfigError, match="has shape"):
        make_penalty("l2sp_fisher", model, source, LAYER_OF, schedule=1.0, fisher=fisher, decoder_lambda=0.0)
    with pytest.raises(ConfigError, match="not a parameter of the model"):
        make_penalty("l2sp", model, source, {**LAYER_OF, "encoder.9.weight": 4}, sp_lambda=1.0, decoder_lambda=0.0)
    with pytest.raises(ConfigError, match="integer >= 1"):
        make_penalty("l2sp", model, source, {**LAYER_OF, "encoder.4.bias": 0}, sp_lambda=1.0, decoder_lambda=0.0)
    pen = make_penalty("l2sp", model, source, LAYER_OF, sp_lambda=1.0, decoder_lambda=0.0)
    with pytest.raises(ConfigError, match="built for another model"):
        pen(nn.Linear(1, 1))


def test_group_shapes() -> None:
    assert penalties_group.as_groups(torch.zeros(4, 3, 2, 2)).shape == (4, 12)
    assert penalties_group.as_groups(torch.zeros(3)).shape == (1, 3)
    assert penalties_group.as_groups(torch.zeros(())).shape == (1, 1)


@pytest.mark.parametrize("module", [penalties, penalties_base, penalties_sp, penalties_group])
def test_doctests(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0
    assert result.failed == 0
