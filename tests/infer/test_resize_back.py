import numpy as np
import pytest
import torch

from covidseg.data.preprocess import resize_to_native
from covidseg.infer.resize_back import argmax_classes, axis_window, labels_to_native, non_background


def test_argmax_classes_matches_torch_argmax():
    torch.manual_seed(0)
    probs = torch.rand(3, 4, 17, 19)
    probs[0, 2, 0, 0] = probs[0, 1, 0, 0] = 2.0  # a tie goes to the lower class, as in argmax
    assert torch.equal(argmax_classes(probs).long(), probs.argmax(dim=1))
    assert argmax_classes(probs).dtype == torch.uint8 and int(argmax_classes(probs)[0, 0, 0]) == 1


@pytest.mark.parametrize("n_classes", [1, 2, 3, 5])
def test_argmax_classes_for_any_class_count_and_memory_format(n_classes):
    torch.manual_seed(n_classes)
    probs = torch.randint(0, 4, (2, n_classes, 9, 11)).float()  # many ties
    expected = probs.argmax(dim=1)
    assert torch.equal(argmax_classes(probs).long(), expected)
    channels_last = probs.contiguous(memory_format=torch.channels_last)
    assert torch.equal(argmax_classes(channels_last).long(), expected)


def _blobby_probs(n: int, size: tuple[int, int], seed: int) -> torch.Tensor:
    """Softmax of smooth random logits: background everywhere except a few blobs of lung and opacity."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, size[0] // 8 + 1, size[1] // 8 + 1, generator=gen) * 4
    logits[:, 0] += 3  # mostly background
    logits = torch.nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    logits[-1, 0] += 100  # the last slice is all background
    return logits.softmax(dim=1)


def _full(probs: torch.Tensor, native: tuple[int, int], mode: str) -> np.ndarray:
    return argmax_classes(resize_to_native(probs, native, mode)).numpy()


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize(("network", "native"), [((96, 96), (128, 128)), ((96, 64), (128, 100)), ((64, 64), (48, 40))])
def test_windowed_labels_equal_the_full_resize(network, native, mode):
    probs = _blobby_probs(4, network, seed=sum(native))
    out = np.full((4, *native), 7, np.uint8)
    labels_to_native(probs, out, mode)
    expected = _full(probs, native, mode)
    assert 0 < (expected > 0).mean() < 0.6  # some foreground, not everywhere
    assert not out[-1].any()
    np.testing.assert_array_equal(out, expected)


def test_windowed_labels_on_channels_last_and_non_dyadic_sizes_agree():
    probs = _blobby_probs(3, (96, 96), seed=5).contiguous(memory_format=torch.channels_last)
    out = np.zeros((3, 130, 111), np.uint8)  # 96 -> 130 and 96 -> 111: scales not exact in binary
    labels_to_native(probs, out)
    expected = _full(probs, (130, 111), "bilinear")
    assert (out != expected).sum() <= 2  # only exact ties can differ


def test_a_foreground_pixel_at_the_image_edge_reaches_the_native_edge():
    probs = torch.zeros(1, 2, 12, 12)
    probs[:, 0] = 1
    probs[0, :, 11, 0] = torch.tensor([0.0, 1.0])
    out = np.zeros((1, 16, 16), np.uint8)
    labels_to_native(probs, out)
    np.testing.assert_array_equal(out, _full(probs, (16, 16), "bilinear"))
    assert out[0, 15, 0] == 1


def test_axis_window_covers_every_native_pixel_the_foreground_reaches():
    network, native = 384, 512
    scale = network / native
    for low, high in [(0, 1), (100, 200), (383, 384), (5, 6)]:
        window = axis_window(low, high, network, native)
        source = (np.arange(native) + 0.5) * scale - 0.5
        floor = np.floor(np.clip(source, 0, None)).astype(int)
        touched = np.flatnonzero((np.minimum(floor + 1, network - 1) >= low) & (floor < high))
        assert window.native.start <= touched[0] and touched[-1] < window.native.stop
        assert window.keep.stop - window.keep.start == window.native.stop - window.native.start
        assert window.source.start >= 0 and window.source.stop <= network


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="bilinear"):
        labels_to_native(torch.zeros(1, 2, 4, 4), np.zeros((1, 8, 8), np.uint8), "bicubic")
    with pytest.raises(ValueError, match="non-empty"):
        axis_window(5, 5, 10, 20)
    assert not non_background(torch.ones(1, 3, 2, 2)).any()  # ties go to background
    assert not non_background(torch.ones(1, 1, 2, 2)).any()  # background is the only class


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_windows_found_on_logits_give_the_labels_of_their_probabilities(dtype):
    logits = torch.log(_blobby_probs(4, (96, 96), seed=11)).to(dtype)
    out = np.zeros((4, 128, 128), np.uint8)
    labels_to_native(logits, out, softmax=True)
    expected = _full(torch.softmax(logits.float(), dim=1), (128, 128), "bilinear")
    assert expected.any()
    np.testing.assert_array_equal(out, expected)
