from __future__ import annotations

import json

import pytest
import torch

from covidseg.errors import ConfigError, InputError
from covidseg.model.unet import DenseUNet, UNetConfig, check_input_size, count_parameters, size_error_message

ENCODER_PARAMS = 6_947_584
TOTAL_PARAMS = 12_859_107


def test_config_round_trip_through_json() -> None:
    cfg = UNetConfig(in_channels=3, class_names=("bg", "opacity"), decoder_channels=(64, 32, 16, 8, 8))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data == {
        "in_channels": 3,
        "class_names": ["bg", "opacity"],
        "decoder_channels": [64, 32, 16, 8, 8],
        "head_kernel_size": 1,
    }
    back = UNetConfig.from_dict(data)
    assert back == cfg
    assert back.class_names == ("bg", "opacity")
    assert back.num_classes == 2
    assert UNetConfig().num_classes == 3


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"in_channel": 1}, "unknown model config keys \\['in_channel'\\]"),
        ({"in_channels": 0}, "in_channels"),
        ({"in_channels": True}, "in_channels"),
        ({"class_names": ["background"]}, "class_names"),
        ({"class_names": ["a", "a"]}, "class_names"),
        ({"class_names": "background"}, "class_names"),
        ({"decoder_channels": [1, 2, 3]}, "decoder_channels"),
        ({"decoder_channels": [8, 8, 8, 8, 0]}, "decoder_channels"),
        ({"head_kernel_size": 5}, "head_kernel_size"),
    ],
)
def test_config_rejects_bad_values(data: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        UNetConfig.from_dict(data)


def test_config_from_non_mapping() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        UNetConfig.from_dict([1, 2])  # type: ignore[arg-type]


def test_parameter_counts(model: DenseUNet) -> None:
    assert count_parameters(model.encoder) == ENCODER_PARAMS
    assert len(list(model.encoder.parameters())) == 362
    assert count_parameters(model) == TOTAL_PARAMS
    assert abs(count_parameters(model) - 12.9e6) < 0.1e6


# Each new input shape costs a one-off oneDNN set-up of about 3 s per process: tests share (1, 1, 64, 64).
@pytest.mark.parametrize(("height", "width"), [(64, 64), (32, 64)])
def test_forward_shapes_and_proba(model: DenseUNet, height: int, width: int) -> None:
    x = torch.rand(1, 1, height, width)
    with torch.no_grad():
        logits = model(x)
        proba = model.predict_proba(x)
    assert logits.shape == (1, 3, height, width)
    torch.testing.assert_close(proba, torch.softmax(logits, 1))
    torch.testing.assert_close(proba.sum(1), torch.ones(1, height, width))


def test_variants_three_channels_two_classes_3x3_head() -> None:
    cfg = UNetConfig(in_channels=3, class_names=("background", "opacity"), head_kernel_size=3)
    model = DenseUNet(cfg).eval()
    assert model.encoder.conv0.in_channels == 3
    assert model.head.kernel_size == (3, 3)
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 64)).shape == (1, 2, 32, 64)


def test_skips_come_from_the_documented_encoder_stages(model: DenseUNet) -> None:
    x = torch.rand(1, 1, 64, 64)
    received: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    handles = [
        block.register_forward_pre_hook(lambda _m, args: received.append((args[0].clone(), args[1])))
        for block in model.decoder
    ]
    try:
        with torch.no_grad():
            model(x)
            enc = model.encoder
            relu0 = enc[:3](x).clone()
            block1 = enc[:5](x).clone()
            block2 = enc[:7](x).clone()
            block3 = enc[:9](x).clone()
            bottleneck = torch.relu(enc(x))
    finally:
        for handle in handles:
            handle.remove()
    assert [tuple(s.shape) if s is not None else None for _, s in received] == [
        (1, 1024, 4, 4),
        (1, 512, 8, 8),
        (1, 256, 16, 16),
        (1, 64, 32, 32),
        None,
    ]
    torch.testing.assert_close(received[0][0], bottleneck)
    for (_, skip), expected in zip(received[:4], (block3, block2, block1, relu0), strict=True):
        torch.testing.assert_close(skip, expected)


def test_size_not_divisible_names_nearest_sizes(model: DenseUNet) -> None:
    with pytest.raises(InputError, match=r"100x64 .*height 96 or 128, width 64"):
        model(torch.rand(1, 1, 100, 64))
    with pytest.raises(InputError, match=r"height 32, width 32 or 64"):
        check_input_size(20, 50)
    assert size_error_message(384, 512) == ""
    check_input_size(384, 512)


def test_wrong_channels_or_rank(model: DenseUNet) -> None:
    with pytest.raises(InputError, match=r"\(N, 1, H, W\), got \[1, 3, 64, 64\]"):
        model(torch.rand(1, 3, 64, 64))
    with pytest.raises(InputError, match="got \\[1, 64, 64\\]"):
        model(torch.rand(1, 64, 64))


def test_channels_last_matches_contiguous(model: DenseUNet) -> None:
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        model_cl = DenseUNet(model.config).eval()
        model_cl.load_state_dict(model.state_dict())
        model_cl = model_cl.to(memory_format=torch.channels_last)
        out = model_cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_bf16_autocast_on_cpu(model: DenseUNet) -> None:
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x.to(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    agreement = (out.float().argmax(1) == ref.argmax(1)).float().mean().item()
    assert agreement > 0.9
    assert (out.float().softmax(1) - ref.softmax(1)).abs().max().item() < 0.1


def test_training_step_reaches_every_parameter() -> None:
    torch.manual_seed(1)
    model = DenseUNet(UNetConfig(class_names=("background", "opacity"))).train()
    x = torch.rand(1, 1, 64, 64)
    target = torch.randint(0, 2, (1, 64, 64))
    torch.nn.functional.cross_entropy(model(x), target).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


# torch 2.13 deprecates torch.jit.script; TorchScript export is still required (MONAI bundles), so test it.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_matches_eager(model: DenseUNet) -> None:
    scripted = torch.jit.script(model)
    x = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(scripted.predict_proba(x), model.predict_proba(x))
    with pytest.raises(torch.jit.Error, match="height 64 or 96"):
        scripted(torch.rand(1, 1, 70, 64))
