"""The loop of an exported bundle's ``inference.json``: dataset -> inferer -> post-processing, per scan.

MONAI's ``SupervisedEvaluator`` needs pytorch-ignite; this loop needs only torch and MONAI, so the bundle runs
wherever MONAI does. It is the ``evaluator`` of the bundle config (``"run": ["$@evaluator.run()"]``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = ["SliceEvaluator"]

_LOGGER = logging.getLogger(__name__)


def _plain(value: Any) -> torch.Tensor:
    """A plain tensor view of a tensor or MetaTensor (its metadata comes back through ``Invertd``)."""
    as_tensor = getattr(value, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else torch.as_tensor(value)


class SliceEvaluator:
    """Run a network over every scan of a dataset and post-process (and save) each result.

    Args:
        dataset: Items after preprocessing, each a dict with ``image_key`` ``(C, ...)`` (a MONAI ``Dataset``).
        network: The network (set to eval mode).
        inferer: Called as ``inferer(batch, network)`` with a batch of one scan ``(1, C, ...)``
            (a MONAI ``SliceInferer``).
        postprocessing: Called with the item dict holding ``pred_key`` ``(classes, ...)``; it saves the output.
        device: Where the network runs.
        image_key: Input key of the items.
        pred_key: Key the network output is stored under.

    Examples:
        >>> net = torch.nn.Conv2d(1, 2, 1)
        >>> seen = []
        >>> ev = SliceEvaluator([{"image": torch.ones(1, 4, 4)}], net, lambda x, n: n(x), seen.append)
        >>> ev.run(), seen[0]["pred"].shape
        (1, torch.Size([2, 4, 4]))
    """

    def __init__(
        self,
        dataset: Iterable[Mapping[str, Any]],
        network: torch.nn.Module,
        inferer: Callable[..., Any],
        postprocessing: Callable[[dict[str, Any]], Any],
        device: str | torch.device = "cpu",
        image_key: str = "image",
        pred_key: str = "pred",
    ) -> None:
        self.dataset = dataset
        self.network = network
        self.inferer = inferer
        self.postprocessing = postprocessing
        self.device = torch.device(device)
        self.image_key = image_key
        self.pred_key = pred_key

    def run(self) -> int:
        """Process every item; return how many were processed."""
        self.network.eval()
        count = 0
        with torch.no_grad():
            for item in self.dataset:
                data = dict(item)
                batch = _plain(data[self.image_key]).unsqueeze(0).to(self.device)
                pred = self.inferer(batch, self.network)
                data[self.pred_key] = _plain(pred)[0].detach().cpu()
                self.postprocessing(data)
                count += 1
                _LOGGER.info("processed %d scan(s)", count)
        return count
