import numpy as np
import pytest
import torch
from monai.transforms import Resize, ScaleIntensityRange

from covidseg.data.preprocess import (
    DEFAULT_WINDOW,
    HU_AIR,
    PreprocessConfig,
    iter_slice_batches,
    preprocess_slices,
    preprocess_volume,
    resize_to_native,
    window_hu,
)
from covidseg.errors import ConfigError


def _volume(shape=(7, 90, 110), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(-1300, 400, size=shape, dtype=np.int16)


def test_window_maps_paper_window_to_unit_interval():
    hu = np.array([-2000, HU_AIR, -750, -250, 0, 1500], dtype=np.int16)
    assert window_hu(hu, DEFAULT_WINDOW).tolist() == [0.0, 0.0, 0.25, 0.75, 1.0, 1.0]


def test_window_does_not_modify_float_input():
    hu = np.array([-2000.0, 0.0], dtype=np.float32)
    window_hu(hu)
    assert hu.tolist() == [-2000.0, 0.0]


def test_matches_monai_components():
    """The bundle rebuilds preprocessing from MONAI transforms: both must agree to float precision."""
    hu = _volume()
    cfg = PreprocessConfig(window=(-1000.0, 0.0), slice_size=(64, 96))
    ours = preprocess_slices(hu, cfg)
    scale = ScaleIntensityRange(a_min=-1000.0, a_max=0.0, b_min=0.0, b_max=1.0, clip=True)
    resize = Resize(spatial_size=(64, 96), mode="bilinear", align_corners=False)
    for k in range(hu.shape[0]):
        ref = resize(scale(torch.as_tensor(hu[k : k + 1], dtype=torch.float32)))
        np.testing.assert_allclose(ours[k].numpy(), np.asarray(ref), atol=1e-6)


def test_streaming_equals_whole_volume():
    hu = _volume((11, 64, 80))
    cfg = PreprocessConfig(slice_size=(32, 32))
    whole = preprocess_volume(hu, cfg, batch_size=100)
    parts = [batch for _, batch in iter_slice_batches(hu, cfg, batch_size=3)]
    assert [p.shape[0] for p in parts] == [3, 3, 3, 2]
    torch.testing.assert_close(torch.cat(parts), whole)


def test_same_size_is_identity_resize():
    hu = _volume((2, 64, 64))
    out = preprocess_slices(hu, PreprocessConfig(slice_size=(64, 64)))
    torch.testing.assert_close(out[:, 0], window_hu(hu))


def test_resize_to_native_inverts_geometry_of_smooth_maps():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 120), torch.linspace(0, 1, 100), indexing="ij")
    native = torch.stack([yy, xx])[None]  # (1, 2, 120, 100) smooth ramps
    small = torch.nn.functional.interpolate(native, size=(64, 64), mode="bilinear", align_corners=False)
    back = resize_to_native(small, (120, 100))
    assert back.shape == native.shape
    assert (back - native).abs().max() < 0.02


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": (0.0, -1000.0)},
        {"window": (float("nan"), 0.0)},
        {"slice_size": (100, 384)},
        {"slice_size": (384,)},
        {"resize_mode": "lanczos"},
    ],
)
def test_bad_config_is_config_error(kwargs):
    with pytest.raises(ConfigError):
        PreprocessConfig(**kwargs)


def test_config_round_trip_and_unknown_key():
    cfg = PreprocessConfig(window=(-1100, 100), slice_size=(256, 320))
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown preprocessing keys"):
        PreprocessConfig.from_dict({"windoww": [-1000, 0]})
