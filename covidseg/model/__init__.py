"""DenseNet121-encoder U-Net, the encoder layer index, source weights and the covidseg checkpoint format."""

from covidseg.model.checkpoint import (
    CHECKPOINT_FORMAT,
    FORMAT_VERSION,
    build_model_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
    unwrap_model,
)
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
from covidseg.model.weights import (
    CHANNEL_ADAPTATIONS,
    LoadReport,
    adapt_input_channels,
    load_source,
    load_state_into,
    load_torchvision_densenet121,
)

__all__ = [
    "CHANNEL_ADAPTATIONS",
    "CHECKPOINT_FORMAT",
    "FORMAT_VERSION",
    "STAGES",
    "DenseUNet",
    "EncoderLayer",
    "LoadReport",
    "UNetConfig",
    "adapt_input_channels",
    "batchnorm_modules",
    "build_model_from_checkpoint",
    "check_input_size",
    "count_parameters",
    "decoder_param_names",
    "encoder_layers",
    "encoder_param_layer",
    "load_checkpoint",
    "load_source",
    "load_state_into",
    "load_torchvision_densenet121",
    "save_checkpoint",
    "stage_groups",
    "unwrap_model",
]
