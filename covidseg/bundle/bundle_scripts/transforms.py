"""covidseg's post-processing (lung mask, components, holes, morphology) as a MONAI dictionary transform.

Shipped inside exported bundles (``scripts/transforms.py``), where the import of ``postprocess`` below is
rewritten to the shipped copy. The transform works on arrays in the bundle's working orientation
(:data:`MONAI_AXCODES`, MONAI channel-first ``(1, y, x, z)``): it moves them to covidseg's canonical
``(z, y, x)`` layout, runs :func:`postprocess` with the configured :class:`PostprocessConfig`, and moves the
result back, keeping the metadata (affine, applied operations) of the input.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from nibabel.orientations import aff2axcodes

from covidseg.infer.postprocess import PostprocessConfig, postprocess

__all__ = ["CANONICAL_FROM_WORKING", "MONAI_AXCODES", "WORKING_FROM_CANONICAL", "LungOpacityPostprocessd"]

MONAI_AXCODES = "PLS"
"""Axis codes of the bundle's working arrays (``Orientationd``): axes (y, x, z) with y toward posterior, x toward
the patient's left, z toward superior. An axial slice ``[:, :, k]`` is then covidseg's ``hu[k]`` (rows y,
columns x), so the 2-D network sees exactly the slices ``covidseg predict`` gives it."""
CANONICAL_FROM_WORKING = (2, 0, 1)
"""``np.transpose`` axes from a working ``(y, x, z)`` array to covidseg's canonical ``(z, y, x)``."""
WORKING_FROM_CANONICAL = (1, 2, 0)
"""``np.transpose`` axes from canonical ``(z, y, x)`` back to working ``(y, x, z)``."""


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _affine(value: Any) -> np.ndarray | None:
    if isinstance(value, MetaTensor):
        return np.asarray(_as_numpy(value.affine), dtype=np.float64)
    return None


class LungOpacityPostprocessd(MapTransform):
    """Turn argmax class indices into the final label map (0 background, 1 lung, 2 opacity), as covidseg does.

    Args:
        keys: Keys of ``(1, y, x, z)`` class-index maps (``AsDiscreted(argmax=True)`` output) in the
            :data:`MONAI_AXCODES` orientation.
        hu_key: Key of the scan in Hounsfield units on the same grid (a copy taken right after ``Orientationd``);
            its affine gives the voxel spacing, its values the HU lung mask of models without a lung class.
        class_names: The network's classes, index = channel (``background``, ``opacity``, optional ``lung``).
        config: :meth:`PostprocessConfig.to_dict` values; defaults when None.
        allow_missing_keys: Skip keys that are absent.

    Examples:
        >>> from monai.data import MetaTensor
        >>> labels = np.zeros((12, 12, 6), np.float32)  # (y, x, z)
        >>> labels[2:10, 2:10, 1:5] = 1  # one lung
        >>> labels[4:8, 4:8, 2:4] = 2  # a lesion
        >>> affine = np.array([[0, -2.0, 0, 0], [-2.0, 0, 0, 0], [0, 0, 2.0, 0], [0, 0, 0, 1]])  # PLS, 2 mm
        >>> hu = MetaTensor(torch.zeros(1, 12, 12, 6), affine=torch.as_tensor(affine))
        >>> post = LungOpacityPostprocessd("pred", config={"min_lung_component_ml": 0.1})
        >>> out = post({"pred": MetaTensor(torch.as_tensor(labels[None])), "hu": hu})["pred"]
        >>> np.bincount(out.numpy().astype(int).ravel()).tolist()
        [608, 224, 32]
    """

    def __init__(
        self,
        keys: KeysCollection,
        hu_key: str = "hu",
        class_names: Sequence[str] = ("background", "lung", "opacity"),
        config: Mapping[str, Any] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.hu_key = hu_key
        self.class_names = tuple(str(name) for name in class_names)
        self.config = PostprocessConfig.from_dict(dict(config or {}))

    def config_for(self, n_slices: int) -> PostprocessConfig:
        """The post-processing of a scan with ``n_slices`` axial slices.

        As in ``covidseg predict`` (``covidseg.infer.pipeline.postprocess_config_for``): one slice cannot hold
        a lung volume in mL, so a single-slice input drops the minimum lung component volume.

        Examples:
            >>> LungOpacityPostprocessd("pred").config_for(1).min_lung_component_ml
            0.0
        """
        if n_slices == 1 and self.config.min_lung_component_ml > 0:
            return PostprocessConfig.from_dict({**self.config.to_dict(), "min_lung_component_ml": 0.0})
        return self.config

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        """Post-process every key; the HU entry is left as it is."""
        d = dict(data)
        hu = d[self.hu_key]
        affine = _affine(hu)
        if affine is None:
            raise ValueError(f"{self.hu_key!r} must be a MetaTensor with an affine (LoadImaged output)")
        codes = "".join(aff2axcodes(affine))
        if codes != MONAI_AXCODES:
            raise ValueError(f"arrays must be oriented {MONAI_AXCODES} (Orientationd), got {codes}")
        spacing_yxz = np.linalg.norm(affine[:3, :3], axis=0)
        spacing = (float(spacing_yxz[2]), float(spacing_yxz[0]), float(spacing_yxz[1]))
        hu_zyx = np.transpose(_as_numpy(hu)[0], CANONICAL_FROM_WORKING)
        for key in self.key_iterator(d):
            d[key] = self._apply(d[key], hu_zyx, spacing)
        return d

    def _apply(self, labels: Any, hu_zyx: np.ndarray, spacing: tuple[float, float, float]) -> Any:
        array = _as_numpy(labels)
        if array.ndim != 4 or array.shape[0] != 1:
            raise ValueError(f"expected a (1, y, x, z) class-index map, got shape {array.shape}")
        indices = np.transpose(np.rint(array[0]).astype(np.uint8), CANONICAL_FROM_WORKING)
        config = self.config_for(indices.shape[0])
        out = postprocess(indices, spacing, config, class_names=self.class_names, hu=hu_zyx)
        result = torch.from_numpy(np.ascontiguousarray(np.transpose(out, WORKING_FROM_CANONICAL))[None])
        if isinstance(labels, MetaTensor):
            return MetaTensor(result, meta=labels.meta, applied_operations=labels.applied_operations)
        return result
