"""Diagonal Fisher information of the source task, for L2-SP-Fisher and GL-SP-Fisher (EWC-style).

The estimate is the *empirical* Fisher: with the observed labels y_n (not labels sampled from the model),

    F_j = (1/N) Σ_n (∂ ℓ_n / ∂θ_j)²,   ℓ_n = loss_fn(model(x_n), y_n),

the mean over N samples of the squared per-sample gradient of the negative log-likelihood. Each sample is a
separate forward/backward pass with batch size 1, and the model is in eval mode so BatchNorm uses its running
statistics (the per-sample value does not depend on the other samples of the batch, and no statistics are
updated). ``loss_fn`` defines the log-likelihood of one sample: ``nn.CrossEntropyLoss()`` (pixel mean) gives
the gradient of the per-pixel mean log-likelihood, which scales F by 1/P² against the pixel sum.

Normalization: ``normalize="none"`` returns F as defined; ``normalize="mean"`` divides every entry by the mean
of all returned entries, so the average F is 1 and a Fisher penalty's λ is on the scale of plain L2-SP whatever
the loss reduction or image size (Li et al. 2018 use the raw Fisher; pick one and keep it fixed within a study).

The estimate is stored with the penalty (buffers of its ``fisher`` submodule, in its ``state_dict``);
:func:`save_fisher` / :func:`load_fisher` keep a standalone copy so the source pass runs once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable
from typing import Literal

import torch
from torch import Tensor, nn

from covidseg.errors import ConfigError, InputError
from covidseg.io.atomic import atomic_path

__all__ = ["FISHER_NORMALIZATIONS", "estimate_diagonal_fisher", "load_fisher", "save_fisher"]

FisherNormalization = Literal["none", "mean"]
FISHER_NORMALIZATIONS: tuple[str, ...] = ("none", "mean")


def estimate_diagonal_fisher(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    max_batches: int | None = None,
    normalize: FisherNormalization = "none",
    names: Collection[str] | None = None,
) -> dict[str, Tensor]:
    """Estimate the diagonal empirical Fisher of ``model`` on labelled source data.

    Args:
        model: The source model (its parameter names are the keys of the result); put in eval mode for the
            estimate and restored to its previous mode afterwards. Gradients in ``.grad`` are not touched.
        batches: ``(images, labels)`` pairs; the first dimension indexes samples.
        loss_fn: Negative log-likelihood of one sample, ``loss_fn(model(x[n:n+1]), y[n:n+1])`` -> scalar.
        max_batches: Use at most this many batches (None: all).
        normalize: ``"none"`` (mean squared gradient) or ``"mean"`` (divided by the mean entry, see module doc).
        names: Parameters to estimate (default: every parameter with ``requires_grad``).

    Returns:
        Parameter name -> tensor of F with the parameter's shape, dtype and device (zeros where no gradient
        reaches a parameter).

    Raises:
        ConfigError: Bad ``max_batches``/``normalize``/``names``.
        InputError: No samples, or images and labels of different lengths.

    Examples:
        >>> net = nn.Linear(2, 2)
        >>> data = [(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))]
        >>> fisher = estimate_diagonal_fisher(net, data, nn.functional.cross_entropy)
        >>> sorted(fisher), fisher["weight"].shape
        (['bias', 'weight'], torch.Size([2, 2]))
    """
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)):
        raise ConfigError(f"max_batches must be a positive integer or None, got {max_batches!r}")
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be >= 1, got {max_batches}")
    if normalize not in FISHER_NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {list(FISHER_NORMALIZATIONS)}, got {normalize!r}")
    all_params = dict(model.named_parameters())
    if names is None:
        selected = [n for n, p in all_params.items() if p.requires_grad]
    else:
        unknown = [n for n in names if n not in all_params]
        if unknown:
            raise ConfigError(f"names {unknown[:3]} are not parameters of the model; use names from named_parameters()")
        selected = [n for n in all_params if n in set(names)]
    if not selected:
        raise ConfigError("no parameters to estimate the Fisher for (all frozen, or names is empty)")
    params = [all_params[n] for n in selected]
    sums = [torch.zeros_like(p, memory_format=torch.preserve_format) for p in params]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    n_samples = 0
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            for batch_index, (images, labels) in enumerate(batches):
                if max_batches is not None and batch_index >= max_batches:
                    break
                if len(images) != len(labels):
                    raise InputError(
                        f"batch {batch_index} has {len(images)} images but {len(labels)} labels; pair each image "
                        f"with its label"
                    )
                for n in range(len(images)):
                    loss = loss_fn(model(images[n : n + 1]), labels[n : n + 1])
                    grads = torch.autograd.grad(loss, params, allow_unused=True)
                    present = [(s, g) for s, g in zip(sums, grads, strict=True) if g is not None]
                    if present:
                        acc, grad = zip(*present, strict=True)
                        torch._foreach_addcmul_(list(acc), list(grad), list(grad))
                    n_samples += 1
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
        model.train(was_training)
    if n_samples == 0:
        raise InputError("the Fisher estimate got no samples; give at least one (image, label) batch")
    fisher = torch._foreach_div(sums, float(n_samples))
    if normalize == "mean":
        total = sum(float(f.sum()) for f in fisher)
        count = sum(f.numel() for f in fisher)
        mean = total / count
        if mean <= 0:
            raise InputError("every Fisher entry is 0 (the loss has no gradient); cannot normalize by the mean")
        fisher = torch._foreach_div(fisher, mean)
    return {n: f.detach() for n, f in zip(selected, fisher, strict=True)}


def save_fisher(fisher: dict[str, Tensor], path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write a Fisher estimate atomically with ``torch.save`` (a plain name -> tensor dict).

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "fisher.pt"
        >>> save_fisher({"w": torch.ones(2)}, out)
        >>> load_fisher(out)["w"]
        tensor([1., 1.])
    """
    clean = {str(k): v.detach().cpu().contiguous() for k, v in fisher.items()}
    with atomic_path(path, overwrite=overwrite) as tmp:
        torch.save(clean, tmp)


def load_fisher(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a Fisher estimate written by :func:`save_fisher` (``weights_only=True``).

    Raises:
        InputError: The file is missing or is not a name -> tensor mapping.
    """
    if not os.path.isfile(path):
        raise InputError(f"Fisher file {os.fspath(path)} does not exist; estimate it first (save_fisher)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise InputError(f"cannot read {os.fspath(path)} as a Fisher estimate ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in data.items()):
        raise InputError(f"{os.fspath(path)} does not hold a parameter name -> tensor mapping")
    return data
