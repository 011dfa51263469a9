"""Hydra's basic sweeper, composing each job's config once instead of twice.

The basic sweeper composes every job of a batch to validate it before launching any, and the
in-process launcher composes each job again to run it (about 70 ms a composition on 2 cores).
This sweeper validates the same way and hands what it composed to that launcher. Other
launchers (joblib, Ray, Submitit) compose in their own processes: for them it is the basic
sweeper.

No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it is in
sys.modules, where dataclasses cannot resolve string annotations.
"""

from collections import deque
from dataclasses import dataclass
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.types import HydraContext
from omegaconf import DictConfig


@dataclass
class ComposeOnceSweeperConf:
    """`hydra/sweeper=tlbench`: the basic sweeper's options, plus how many validated job configs
    (about 0.2 MB each) are kept for the launcher; later jobs are composed again."""

    _target_: str = "hydra_plugins.tlbench_sweeper.compose_once.ComposeOnceSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    keep: int = 256


ConfigStore.instance().store(group="hydra/sweeper", name="tlbench", node=ComposeOnceSweeperConf,
                             provider="tlbench")


IN_PROCESS = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


class KeptConfigs:
    """A config loader that serves each kept job config once, in the order it was composed, and
    leaves everything else to Hydra's loader."""

    def __init__(self, loader: Any, keep: int) -> None:
        self.loader, self.keep = loader, keep
        self.kept: dict[tuple[str, ...], deque[DictConfig]] = {}
        self.count = 0

    def compose(self, master_config: DictConfig, overrides: list[str]) -> None:
        """Compose one job's config (raising as Hydra does on a bad one); keep it while room."""
        config = self.loader.load_sweep_config(master_config, overrides)
        if self.count < self.keep:
            self.kept.setdefault(tuple(overrides), deque()).append(config)
            self.count += 1

    def load_sweep_config(self, master_config: DictConfig,
                          sweep_overrides: list[str]) -> DictConfig:
        """The kept config of these overrides, else a fresh composition."""
        configs = self.kept.get(tuple(sweep_overrides))
        if configs:
            self.count -= 1
            return configs.popleft()
        return self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name: str) -> Any:
        """Everything but job configs: Hydra's loader."""
        return getattr(self.loader, name)


class ComposeOnceSweeper(BasicSweeper):
    """The basic sweeper (same grid, same batches, every job validated before any runs), whose
    validation composes the configs the in-process launcher runs."""

    def __init__(self, max_batch_size: int | None, params: dict[str, str] | None = None,
                 keep: int = 256) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.keep = keep
        self.configs: KeptConfigs | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: Any,
              config: DictConfig) -> None:
        """Set up as the basic sweeper; an in-process launcher then loads job configs through
        the kept ones."""
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if config.hydra.launcher._target_ == IN_PROCESS:
            self.configs = KeptConfigs(hydra_context.config_loader, self.keep)
            self.launcher.hydra_context = HydraContext(config_loader=self.configs,
                                                       callbacks=hydra_context.callbacks)

    def validate_batch_is_legal(self, batch) -> None:
        """Compose every job of the batch, keeping the configs for the launcher."""
        if self.configs is None:
            super().validate_batch_is_legal(batch)
            return
        for overrides in batch:
            self.configs.compose(self.config, list(overrides))
