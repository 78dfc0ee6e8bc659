"""The pre-training model: one DenseNet121 encoder shared by several tasks, one decoder + head per task.

Every task is a full :class:`~covidseg.model.DenseUNet` whose ``encoder`` attribute is the same module object,
so a task model is exactly the network ``covidseg train`` and ``covidseg predict`` use, and its
``state_dict()`` (encoder + that task's decoder and head) is a covidseg checkpoint's ``state_dict``. The
multi-task module registers the shared encoder first under ``encoder``, so its parameters are named
``encoder.*`` once (``named_parameters`` skips the shared copies under ``tasks.<name>.encoder``) and the
DenseUNet encoder-layer index, the fine-tuning strategies and the optimizer groups apply unchanged; decoder
and head parameters are ``tasks.<name>.decoder.*`` / ``tasks.<name>.head.*``.

Examples:
    >>> from covidseg.model import UNetConfig
    >>> model = MultiTaskUNet({"a": UNetConfig(class_names=("bg", "x")), "b": UNetConfig()})
    >>> model.task_model("a").encoder is model.task_model("b").encoder is model.encoder
    True
    >>> model(torch.zeros(1, 1, 64, 64), "b").shape
    torch.Size([1, 3, 64, 64])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from covidseg.errors import ConfigError, InputError
from covidseg.model import DenseUNet, UNetConfig

__all__ = ["ENCODER_PREFIX", "MultiTaskUNet"]

ENCODER_PREFIX = "encoder."


class MultiTaskUNet(nn.Module):
    """Shared DenseNet121 encoder with one decoder + head per task.

    Args:
        configs: Task name -> :class:`UNetConfig`; all must share ``in_channels``, ``decoder_channels`` and
            ``head_kernel_size`` (classes may differ). The first task's encoder becomes the shared one.

    Raises:
        ConfigError: No task, or architectures that differ beyond the classes.
    """

    def __init__(self, configs: Mapping[str, UNetConfig]) -> None:
        super().__init__()
        if not configs:
            raise ConfigError("a multi-task model needs at least one task")
        first = next(iter(configs.values()))
        for name, cfg in configs.items():
            if (cfg.in_channels, cfg.decoder_channels, cfg.head_kernel_size) != (
                first.in_channels,
                first.decoder_channels,
                first.head_kernel_size,
            ):
                raise ConfigError(
                    f"task {name!r} has another architecture than the first task; only classes may differ"
                )
        models = {name: DenseUNet(cfg) for name, cfg in configs.items()}
        self.encoder = next(iter(models.values())).encoder
        for model in models.values():
            model.encoder = self.encoder
        self.tasks = nn.ModuleDict(models)

    @property
    def task_names(self) -> tuple[str, ...]:
        """Task names in order."""
        return tuple(self.tasks.keys())

    def task_model(self, name: str) -> DenseUNet:
        """The :class:`DenseUNet` of task ``name`` (shared encoder, its own decoder and head)."""
        if name not in self.tasks:
            raise ConfigError(f"no task {name!r}; tasks are {list(self.tasks)}")
        model = self.tasks[name]
        if not isinstance(model, DenseUNet):  # pragma: no cover - built as DenseUNet only
            raise TypeError(f"task {name!r} holds a {type(model).__name__}")
        return model

    def forward(self, x: torch.Tensor, task: str) -> torch.Tensor:
        """Logits of task ``task`` for images ``(N, C, H, W)``."""
        return self.task_model(task)(x)

    def head_state(self, name: str) -> dict[str, torch.Tensor]:
        """Decoder and head tensors of task ``name`` (DenseUNet names, CPU copies).

        Examples:
            >>> model = MultiTaskUNet({"a": UNetConfig()})
            >>> sorted({k.split(".")[0] for k in model.head_state("a")})
            ['decoder', 'head']
        """
        state = self.task_model(name).state_dict()
        return {k: v.detach().cpu().clone() for k, v in state.items() if not k.startswith(ENCODER_PREFIX)}

    def load_head_state(self, name: str, state: Mapping[str, torch.Tensor]) -> None:
        """Load :meth:`head_state` output back into task ``name``.

        Raises:
            InputError: The tensors do not match the task's decoder and head.
        """
        model = self.task_model(name)
        expected = {k for k in model.state_dict() if not k.startswith(ENCODER_PREFIX)}
        if set(state) != expected:
            missing = sorted(expected - set(state))[:3]
            unknown = sorted(set(state) - expected)[:3]
            raise InputError(
                f"saved decoder of task {name!r} does not match the model (missing {missing}, unknown {unknown}); "
                "resume with the run's own config"
            )
        try:
            model.load_state_dict(dict(state), strict=False)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"saved decoder of task {name!r} does not match the model ({first[:200]})") from exc
