"""Drift analysis: how far each encoder layer moved from its source weights during fine-tuning.

For layer i with tensors t (as assigned by the layer map, e.g. ``covidseg.model.layers.encoder_param_layer``):

* ``relative_drift`` = mean over the layer's tensors of ``||θ_t − θ̄_t|| / ||θ̄_t||`` (Frobenius norms); tensors
  whose source norm is 0 have no relative change and are left out of the mean (NaN if all are);
* ``source_norm``    = ``sqrt(Σ_t ||θ̄_t||²)``, the norm of the whole source layer;
* ``drift_norm``     = ``sqrt(Σ_t ||θ_t − θ̄_t||²)``, the absolute change of the whole layer.

:func:`plot_drift` draws relative drift against the layer index (log-scale y, one line per run) above the source
norm per layer, in the style of Figure 1 of the paper. Pass ``exclude=`` to leave tensors out (for example the
BatchNorm parameters from :func:`covidseg.transfer.penalties_base.batchnorm_param_names`).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from covidseg.errors import InputError
from covidseg.io.atomic import atomic_path

__all__ = ["CSV_COLUMNS", "LayerDrift", "layer_drift", "plot_drift", "read_drift_csv", "write_drift_csv"]

#: Column order of the drift CSV (the :class:`LayerDrift` fields).
CSV_COLUMNS: tuple[str, ...] = ("layer", "relative_drift", "source_norm", "drift_norm", "n_tensors", "n_params")


@dataclass(frozen=True)
class LayerDrift:
    """Drift of one encoder layer (see the module docstring for the definitions).

    Attributes:
        layer: 1-based layer index.
        relative_drift: Mean over tensors of ``||θ − θ̄|| / ||θ̄||``.
        source_norm: Norm of the layer's source tensors together.
        drift_norm: Norm of the layer's change together.
        n_tensors: Tensors in the layer.
        n_params: Scalar parameters in the layer.
    """

    layer: int
    relative_drift: float
    source_norm: float
    drift_norm: float
    n_tensors: int
    n_params: int


def layer_drift(
    state: Mapping[str, Tensor],
    source_state: Mapping[str, Tensor],
    layer_of: Mapping[str, int],
    *,
    exclude: Collection[str] = (),
) -> list[LayerDrift]:
    """Return the drift of every layer named in ``layer_of``, sorted by layer index.

    Args:
        state: Fine-tuned weights (``model.state_dict()`` or ``dict(model.named_parameters())``).
        source_state: Source weights θ̄ with the same names.
        layer_of: Parameter name -> 1-based layer index.
        exclude: Names to leave out (a layer left without tensors is left out of the result).

    Raises:
        InputError: A name of ``layer_of`` is missing from either state, or the shapes differ.

    Examples:
        >>> src = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([1.0])}
        >>> new = {"a": torch.tensor([3.0, 4.5]), "b": torch.tensor([1.0])}
        >>> row = layer_drift(new, src, {"a": 1, "b": 1})[0]
        >>> round(row.relative_drift, 4), round(row.source_norm ** 2, 4), row.n_tensors
        (0.05, 26.0, 2)
    """
    excluded = set(exclude)
    by_layer: dict[int, list[str]] = {}
    for name, index in layer_of.items():
        if name not in excluded:
            by_layer.setdefault(int(index), []).append(name)
    rows = []
    for index in sorted(by_layer):
        names = by_layer[index]
        for name in names:
            for label, mapping in (("fine-tuned", state), ("source", source_state)):
                if name not in mapping:
                    raise InputError(
                        f"the {label} weights have no tensor {name!r}; compare states of the same architecture"
                    )
            if tuple(state[name].shape) != tuple(source_state[name].shape):
                raise InputError(
                    f"{name!r} has shape {tuple(state[name].shape)} fine-tuned but {tuple(source_state[name].shape)} "
                    f"in the source; drift needs tensors of equal shape"
                )
        with torch.no_grad():
            cur = [state[n].detach().to(torch.float64) for n in names]
            src = [
                source_state[n].detach().to(device=c.device, dtype=torch.float64)
                for n, c in zip(names, cur, strict=True)
            ]
            diff_norms = [float(x) for x in torch._foreach_norm(torch._foreach_sub(cur, src))]
            src_norms = [float(x) for x in torch._foreach_norm(src)]
        ratios = [d / s for d, s in zip(diff_norms, src_norms, strict=True) if s > 0]
        rows.append(
            LayerDrift(
                layer=index,
                relative_drift=sum(ratios) / len(ratios) if ratios else math.nan,
                source_norm=math.sqrt(sum(s * s for s in src_norms)),
                drift_norm=math.sqrt(sum(d * d for d in diff_norms)),
                n_tensors=len(names),
                n_params=sum(c.numel() for c in cur),
            )
        )
    return rows


def write_drift_csv(rows: list[LayerDrift], path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
    """Write drift rows as CSV (columns :data:`CSV_COLUMNS`, one row per layer), atomically.

    Examples:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "drift.csv"
        >>> write_drift_csv([LayerDrift(1, 0.5, 2.0, 1.0, 1, 4)], out)
        >>> out.read_text().splitlines()[1]
        '1,0.5,2.0,1.0,1,4'
    """
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in asdict(row).items()})


def read_drift_csv(path: str | os.PathLike[str]) -> list[LayerDrift]:
    """Read a CSV written by :func:`write_drift_csv`.

    Raises:
        InputError: Missing file or wrong columns.
    """
    if not os.path.isfile(path):
        raise InputError(f"drift file {os.fspath(path)} does not exist")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise InputError(f"{os.fspath(path)} has columns {reader.fieldnames}, expected {list(CSV_COLUMNS)}")
        try:
            return [
                LayerDrift(
                    layer=int(rec["layer"]),
                    relative_drift=float(rec["relative_drift"]),
                    source_norm=float(rec["source_norm"]),
                    drift_norm=float(rec["drift_norm"]),
                    n_tensors=int(rec["n_tensors"]),
                    n_params=int(rec["n_params"]),
                )
                for rec in reader
            ]
        except (TypeError, ValueError) as exc:
            raise InputError(f"{os.fspath(path)} has a malformed row ({exc})") from None


def plot_drift(
    runs: Mapping[str, list[LayerDrift]],
    path: str | os.PathLike[str],
    *,
    title: str = "Relative change of encoder weights per layer",
    overwrite: bool = False,
) -> None:
    """Plot relative drift per layer for several runs (log-scale y) above the source norm per layer.

    Uses matplotlib's object API with the Agg canvas (no pyplot state, no display needed); the format follows
    the suffix of ``path`` (.png, .pdf, .svg).

    Args:
        runs: Run label -> drift rows (e.g. ``{"L2-SP": rows_a, "layer-wise L2-SP": rows_b}``).
        path: Output image.
        title: Title of the upper panel.
        overwrite: Replace an existing file.

    Raises:
        InputError: No runs, or a run without rows.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise InputError("plot_drift needs at least one run")
    empty = [label for label, rows in runs.items() if not rows]
    if empty:
        raise InputError(f"run {empty[0]!r} has no drift rows; compute them with layer_drift first")
    fig = Figure(figsize=(9, 6), constrained_layout=True)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    any_positive = False
    for label, rows in runs.items():
        xs = [r.layer for r in rows]
        ys = [r.relative_drift if r.relative_drift > 0 else math.nan for r in rows]
        any_positive |= any(not math.isnan(y) for y in ys)
        top.plot(xs, ys, marker=".", markersize=3, linewidth=1, label=label)
    if any_positive:
        top.set_yscale("log")
    top.set_ylabel(r"mean $\|\theta_i - \bar\theta_i\| \,/\, \|\bar\theta_i\|$")
    top.set_title(title)
    top.grid(True, which="both", alpha=0.3)
    top.legend(loc="best", fontsize="small")
    first = next(iter(runs.values()))
    bottom.plot([r.layer for r in first], [r.source_norm for r in first], color="gray", linewidth=1)
    if any(r.source_norm > 0 for r in first):
        bottom.set_yscale("log")
    bottom.set_ylabel(r"$\|\bar\theta_i\|$ (source)")
    bottom.set_xlabel("encoder layer i (forward order)")
    bottom.grid(True, which="both", alpha=0.3)
    last = max(r.layer for rows in runs.values() for r in rows)
    bottom.set_xlim(0.5, last + 0.5)
    with atomic_path(path, overwrite=overwrite) as tmp:
        fig.savefig(tmp, dpi=120)
