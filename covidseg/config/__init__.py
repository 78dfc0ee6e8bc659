"""Typed, validated run configuration (see :mod:`covidseg.config.sections` for every key)."""

from covidseg.config.loader import apply_overrides, load_config, save_config
from covidseg.config.sections import (
    DataSection,
    LossSection,
    ModelSection,
    OptimSection,
    OutputSection,
    PreprocessSection,
    RegularizationSection,
    RunConfig,
    SourceSection,
    StrategySection,
    TrainSection,
)

__all__ = [
    "DataSection",
    "LossSection",
    "ModelSection",
    "OptimSection",
    "OutputSection",
    "PreprocessSection",
    "RegularizationSection",
    "RunConfig",
    "SourceSection",
    "StrategySection",
    "TrainSection",
    "apply_overrides",
    "load_config",
    "save_config",
]
