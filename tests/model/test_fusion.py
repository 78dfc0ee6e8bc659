"""BatchNorm folding for inference: same outputs, fewer BatchNorms, the original left alone."""

from __future__ import annotations

import torch
from torch import nn

from covidseg.model.fusion import count_batchnorms, fold_batchnorm
from covidseg.model.unet import DenseUNet, UNetConfig

SMALL = UNetConfig(decoder_channels=(32, 16, 16, 8, 8))
# DenseNet121: 58 dense layers (norm1 pre-activation + norm2 after conv1), 3 transitions, norm0, norm5;
# the decoder: two per block. Foldable: norm0, the 58 norm2, the 10 decoder norms.
ALL_BATCHNORMS = 1 + 2 * 58 + 3 + 1 + 10
FOLDABLE = 1 + 58 + 10


def _model_with_statistics(seed: int = 0) -> DenseUNet:
    """A DenseUNet whose BatchNorms have non-trivial running statistics and affine parameters."""
    torch.manual_seed(seed)
    model = DenseUNet(SMALL)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


def test_folded_densenet_gives_the_same_logits() -> None:
    model = _model_with_statistics()
    folded = fold_batchnorm(model)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_folds_every_conv_batchnorm_pair_and_keeps_the_pre_activation_ones() -> None:
    model = _model_with_statistics()
    assert count_batchnorms(model) == ALL_BATCHNORMS
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == ALL_BATCHNORMS - FOLDABLE
    # The folded convs carry the BatchNorm's shift as a bias; the pre-activation norms stay.
    assert folded.decoder[0].conv1.bias is not None and isinstance(folded.decoder[0].norm1, nn.Identity)
    assert folded.encoder.conv0.bias is not None and isinstance(folded.encoder.norm0, nn.Identity)
    layer = folded.encoder.denseblock1.denselayer1.layers
    assert isinstance(layer.norm2, nn.Identity) and isinstance(layer.norm1, nn.BatchNorm2d)


def test_the_original_is_left_alone_unless_inplace() -> None:
    model = _model_with_statistics()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_batchnorm(model)
    assert count_batchnorms(model) == ALL_BATCHNORMS
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    same = fold_batchnorm(model, inplace=True)
    assert same is model and count_batchnorms(model) == ALL_BATCHNORMS - FOLDABLE


def test_fold_matches_the_closed_form_on_one_pair() -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True)
    norm = nn.BatchNorm2d(5, eps=1e-3)
    with torch.no_grad():
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.2, 3)
        norm.weight.uniform_(-2, 2)
        norm.bias.uniform_(-1, 1)
    folded = fold_batchnorm(nn.Sequential(conv, norm))
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    assert torch.allclose(folded[0].weight, conv.weight * scale[:, None, None, None])
    assert torch.allclose(folded[0].bias, (conv.bias - norm.running_mean) * scale + norm.bias)


def test_a_model_without_pairs_comes_back_equal_and_in_eval_mode() -> None:
    net = nn.Sequential(nn.BatchNorm2d(2), nn.ReLU(), nn.Conv2d(2, 2, 1))  # pre-activation: nothing to fold
    folded = fold_batchnorm(net.train())
    assert not folded.training and count_batchnorms(folded) == 1


def test_the_copy_shares_no_storage_with_the_original() -> None:
    model = _model_with_statistics()
    folded = fold_batchnorm(model).to(memory_format=torch.channels_last)
    original = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in original for p in folded.parameters())
