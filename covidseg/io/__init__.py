"""CT input and output: any supported scan in, Hounsfield units in canonical orientation, results written back.

Examples:
    >>> import tempfile, pathlib, numpy as np
    >>> from covidseg.io import CTVolume, canonical_affine, load_ct, save_mask
    >>> hu = np.full((3, 8, 8), -1000, np.int16)
    >>> hu[:, 2:6, 2:6] = 40
    >>> vol = CTVolume.from_canonical(hu, canonical_affine((2.5, 0.7, 0.7)))
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> path = save_mask((vol.hu > -500).astype(np.uint8), vol, out / "mask.nii.gz")
    >>> int(load_ct(path, assume_hu=True).hu.sum())
    48
"""

from covidseg.io.describe import describe
from covidseg.io.dicom_write import write_dicom_series
from covidseg.io.images import LUNG_WINDOW
from covidseg.io.load import load_ct
from covidseg.io.sanity import HU_AIR, looks_like_hu
from covidseg.io.save import save_mask, save_volume
from covidseg.io.volume import CANONICAL_AXCODES, CTVolume, SourceInfo, canonical_affine

__all__ = [
    "CANONICAL_AXCODES",
    "HU_AIR",
    "LUNG_WINDOW",
    "CTVolume",
    "SourceInfo",
    "canonical_affine",
    "describe",
    "load_ct",
    "looks_like_hu",
    "save_mask",
    "save_volume",
    "write_dicom_series",
]
