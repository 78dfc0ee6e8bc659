from __future__ import annotations

import doctest
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from covidseg.errors import ConfigError, InputError, OutputExistsError
from covidseg.transfer import fisher as fisher_module
from covidseg.transfer.fisher import estimate_diagonal_fisher, load_fisher, save_fisher
from covidseg.transfer.penalties import make_penalty


def data(seed: int = 0, n_batches: int = 3, batch: int = 4) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(batch, 3, generator=gen, dtype=torch.float64), torch.randint(0, 2, (batch,), generator=gen))
        for _ in range(n_batches)
    ]


def linear(seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(3, 2).double()


def by_hand(model: nn.Linear, batches: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    """Softmax cross-entropy: dℓ/dW = (p − e_y) xᵀ, dℓ/db = p − e_y, squared and averaged over samples."""
    w, b = model.weight.detach(), model.bias.detach()
    sq_w, sq_b, n = torch.zeros_like(w), torch.zeros_like(b), 0
    for x, y in batches:
        for xi, yi in zip(x, y, strict=True):
            p = torch.softmax(w @ xi + b, dim=0)
            r = p - F.one_hot(yi, 2).to(p.dtype)
            sq_w += torch.outer(r, xi) ** 2
            sq_b += r**2
            n += 1
    return {"weight": sq_w / n, "bias": sq_b / n}


def test_matches_mean_squared_per_sample_gradient() -> None:
    model = linear()
    batches = data()
    got = estimate_diagonal_fisher(model, batches, F.cross_entropy)
    expected = by_hand(model, batches)
    assert sorted(got) == ["bias", "weight"]
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-15)
    assert all(p.grad is None for p in model.parameters())  # .grad untouched


def test_max_batches_and_mean_normalization() -> None:
    model = linear()
    batches = data()
    got = estimate_diagonal_fisher(model, iter(batches), F.cross_entropy, max_batches=2)
    expected = by_hand(model, batches[:2])
    torch.testing.assert_close(got["weight"], expected["weight"], rtol=1e-12, atol=1e-15)
    normed = estimate_diagonal_fisher(model, batches, F.cross_entropy, normalize="mean")
    full = by_hand(model, batches)
    mean = (full["weight"].sum() + full["bias"].sum()) / 8
    torch.testing.assert_close(normed["bias"], full["bias"] / mean, rtol=1e-12, atol=1e-15)
    assert float(sum(f.sum() for f in normed.values())) / 8 == pytest.approx(1.0)


def test_eval_mode_frozen_params_and_mode_restored() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    model[0].weight.requires_grad_(False)
    model.train()
    stats = model[1].running_mean.clone()
    got = estimate_diagonal_fisher(model, data(), F.cross_entropy)
    assert model.training
    assert torch.equal(model[1].running_mean, stats)  # eval mode: BatchNorm statistics not updated
    assert "0.weight" not in got and "2.weight" in got
    assert not model[0].weight.requires_grad
    # names= estimates a frozen parameter too, and restores its flag
    only = estimate_diagonal_fisher(model, data(), F.cross_entropy, names=["0.weight"])
    assert list(only) == ["0.weight"] and float(only["0.weight"].sum()) > 0
    assert not model[0].weight.requires_grad
    # per-sample in eval mode: the estimate does not depend on how samples are batched
    rebatched = [(torch.cat([x for x, _ in data()]), torch.cat([y for _, y in data()]))]
    again = estimate_diagonal_fisher(model, rebatched, F.cross_entropy)
    for name, value in got.items():
        torch.testing.assert_close(again[name], value)


def test_unused_parameter_gets_zeros() -> None:
    class WithSpare(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.spare = nn.Parameter(torch.ones(5))

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x)

    got = estimate_diagonal_fisher(WithSpare().double(), data(), F.cross_entropy)
    assert torch.equal(got["spare"], torch.zeros(5, dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"max_batches": 0}, ConfigError),
        ({"max_batches": 1.5}, ConfigError),
        ({"normalize": "max"}, ConfigError),
        ({"names": ["nope"]}, ConfigError),
        ({"names": []}, ConfigError),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        estimate_diagonal_fisher(linear(), data(), F.cross_entropy, **kwargs)  # type: ignore[arg-type]


def test_bad_data() -> None:
    with pytest.raises(InputError, match="no samples"):
        estimate_diagonal_fisher(linear(), [], F.cross_entropy)
    x, y = data()[0]
    with pytest.raises(InputError, match="4 images but 3 labels"):
        estimate_diagonal_fisher(linear(), [(x, y[:3])], F.cross_entropy)


def test_save_load_and_use_in_penalty(tmp_path: Path) -> None:
    model = linear()
    est = estimate_diagonal_fisher(model, data(), F.cross_entropy)
    path = tmp_path / "fisher.pt"
    save_fisher(est, path)
    with pytest.raises(OutputExistsError):
        save_fisher(est, path)
    loaded = load_fisher(path)
    for name in est:
        assert torch.equal(loaded[name], est[name])
    source = {k: v + 1.0 for k, v in model.state_dict().items()}
    pen = make_penalty(
        "l2sp_fisher", model, source, {"weight": 1, "bias": 1}, schedule=2.0, fisher=loaded, decoder_lambda=0.0
    )
    expected = 2.0 * float(est["weight"].sum() + est["bias"].sum())  # every θ − θ̄ = −1
    assert pen(model).item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(InputError, match="does not exist"):
        load_fisher(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(InputError, match="cannot read"):
        load_fisher(tmp_path / "junk.pt")
    torch.save([torch.ones(1)], tmp_path / "list.pt")
    with pytest.raises(InputError, match="name -> tensor"):
        load_fisher(tmp_path / "list.pt")


def test_doctests() -> None:
    result = doctest.testmod(fisher_module)
    assert result.attempted > 0
    assert result.failed == 0
