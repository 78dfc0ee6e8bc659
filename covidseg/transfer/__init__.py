"""Transfer regularization: coefficient schedules, SP penalties, Fisher, fine-tuning strategies, drift analysis.

Two explicit registries select what a config names: :data:`PENALTIES` (what is added to the loss) and
:data:`STRATEGIES` (what trains when, at which learning rate). :data:`SCHEDULES` turns a few numbers into one λ
per encoder layer, e.g. the paper's ``λ_i = max(0, λ0 − α·log i)``.
"""

from covidseg.transfer.drift import LayerDrift, layer_drift, plot_drift, read_drift_csv, write_drift_csv
from covidseg.transfer.fisher import estimate_diagonal_fisher, load_fisher, save_fisher
from covidseg.transfer.freezing import freeze, set_trainable, trainable_param_names, unfreeze
from covidseg.transfer.penalties import PENALTIES, make_penalty, optimizer_param_groups
from covidseg.transfer.penalties_base import TransferPenalty
from covidseg.transfer.schedules import SCHEDULES, Schedule, make_schedule, resolve_schedule
from covidseg.transfer.strategies import STRATEGIES, make_strategy
from covidseg.transfer.strategy_base import FineTuningStrategy

__all__ = [
    "PENALTIES",
    "SCHEDULES",
    "STRATEGIES",
    "FineTuningStrategy",
    "LayerDrift",
    "Schedule",
    "TransferPenalty",
    "estimate_diagonal_fisher",
    "freeze",
    "layer_drift",
    "load_fisher",
    "make_penalty",
    "make_schedule",
    "make_strategy",
    "optimizer_param_groups",
    "plot_drift",
    "read_drift_csv",
    "resolve_schedule",
    "save_fisher",
    "set_trainable",
    "trainable_param_names",
    "unfreeze",
    "write_drift_csv",
]
