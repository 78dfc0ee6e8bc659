"""DenseNet121-encoder U-Net, the encoder layer index, source weights and the covidseg checkpoint format."""

from covidseg.model.layers import (
    STAGES,
    EncoderLayer,
    batchnorm_modules,
    decoder_param_names,
    encoder_layers,
    encoder_param_layer,
    stage_groups,
)
from covidseg.model.unet import DenseUNet, UNetConfig, check_input_size, count_parameters

__all__ = [
    "STAGES",
    "DenseUNet",
    "EncoderLayer",
    "UNetConfig",
    "batchnorm_modules",
    "check_input_size",
    "count_parameters",
    "decoder_param_names",
    "encoder_layers",
    "encoder_param_layer",
    "stage_groups",
]
