"""DeepSpeed on CPU processes: Lightning's ``DeepSpeedStrategy`` with its three CUDA-only checks lifted.

A DeepSpeed config (ZeRO-2, ZeRO-3, offload) can then be run and debugged on a laptop or in CI, with
gloo between the ranks and DeepSpeed's own CPU accelerator (``DS_ACCELERATOR=cpu``). Lightning's
strategy refuses the CPU in exactly three places, and :class:`CPUDeepSpeedStrategy` changes those and
nothing else:

- ``setup_environment`` raises unless the accelerator is CUDA: here it runs the parent DDP set-up;
- ``setup_distributed`` validates that every device has a CUDA index: here the rest of it runs;
- the engine is given ``device_rank=root_device.index``, which is ``None`` for ``torch.device("cpu")``
  and fails DeepSpeed's ``device_rank >= 0``: here the engine gets the local rank (DeepSpeed's CPU
  accelerator maps every rank to ``cpu``).

:func:`swim.train.utils.instantiate_strategy` picks this class for a ``strategy=deepspeed_*`` config
when ``trainer.accelerator`` is ``cpu``; on GPUs the stock strategy runs unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from typing_extensions import override

DS_ACCELERATOR = "DS_ACCELERATOR"


def use_deepspeed_cpu_accelerator() -> None:
    """Make DeepSpeed choose its CPU accelerator (``DS_ACCELERATOR=cpu``) before it is imported.

    The variable is inherited by the rank processes that Lightning launches. DeepSpeed fixes its
    accelerator on first use, so this must run before anything calls ``get_accelerator()``.

    Raises:
        RuntimeError: ``DS_ACCELERATOR`` names another accelerator, or DeepSpeed has already chosen one.
    """
    chosen = os.environ.setdefault(DS_ACCELERATOR, "cpu")
    if chosen != "cpu":
        raise RuntimeError(
            f"a DeepSpeed strategy on the CPU (trainer.accelerator=cpu) needs {DS_ACCELERATOR}=cpu, "
            f"but the environment sets {DS_ACCELERATOR}={chosen}"
        )
    if "deepspeed" in sys.modules:
        from deepspeed.accelerator import get_accelerator

        name = get_accelerator().device_name()
        if name != "cpu":
            raise RuntimeError(
                f"DeepSpeed was imported with its {name!r} accelerator before the CPU DeepSpeed strategy "
                f"was built; set {DS_ACCELERATOR}=cpu in the environment"
            )


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` on CPU processes (gloo); every argument is the parent's."""

    strategy_name = "deepspeed_cpu"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        use_deepspeed_cpu_accelerator()
        super().__init__(*args, **kwargs)
        self._engine_device_index = False

    @override
    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    @override
    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    @override
    def root_device(self) -> torch.device:
        """The CPU; ``cpu:<local rank>`` while the engine is built (the index is its device rank)."""
        device = super().root_device
        if self._engine_device_index:
            return torch.device(device.type, self.local_rank)
        return device

    @contextmanager
    def _local_rank_as_device_rank(self) -> Iterator[None]:
        self._engine_device_index = True
        try:
            yield
        finally:
            self._engine_device_index = False

    @override
    def _setup_model_and_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        with self._local_rank_as_device_rank():
            return super()._setup_model_and_optimizer(*args, **kwargs)

    @override
    def _initialize_deepspeed_inference(self, model: torch.nn.Module) -> None:
        with self._local_rank_as_device_rank():
            super()._initialize_deepspeed_inference(model)
