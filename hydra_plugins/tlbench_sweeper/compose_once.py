"""Hydra's basic sweeper, composing each job's config once instead of twice, and most of them
from a twin's.

The basic sweeper composes every job of a batch to validate it before launching any, and the
in-process launcher composes each job again to run it (about 70 ms a composition on 2 cores).
This sweeper validates the same way and hands what it composed to that launcher. A job whose
overrides differ from an earlier job's only in plain values (`trainer.lr=0.1` against
`trainer.lr=0.2`, not a config group, `+`, `~` or `hydra.` override) is its twin: its config is a
copy of the twin's with its own values set, as Hydra's composition would set them last (about
7 ms). Other launchers (joblib, Ray, Submitit) compose in their own processes: for them it is
the basic sweeper.

No `from __future__ import annotations` here: Hydra's plugin scan runs this module before it is in
sys.modules, where dataclasses cannot resolve string annotations.
"""

import copy
from collections import deque
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType, ValueType
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict

from tlbench import compat


@dataclass
class ComposeOnceSweeperConf:
    """`hydra/sweeper=tlbench`: the basic sweeper's options, plus how many validated job configs
    (about 0.2 MB each) are kept for the launcher, and as twins' originals; later jobs are
    composed again."""

    _target_: str = "hydra_plugins.tlbench_sweeper.compose_once.ComposeOnceSweeper"
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    keep: int = 256


ConfigStore.instance().store(group="hydra/sweeper", name="tlbench", node=ComposeOnceSweeperConf,
                             provider="tlbench")


PLAIN_VALUES = (str, int, float, bool, type(None))


class KeptConfigs:
    """A config loader that composes job configs (from a twin's where it can), serves each kept
    one once, in the order it was composed, and leaves everything else to Hydra's loader."""

    def __init__(self, loader: Any, keep: int) -> None:
        self.loader, self.keep = loader, keep
        self.kept: dict[tuple[str, ...], deque[DictConfig]] = {}
        self.count = 0
        self.parser = OverridesParser.create()
        self.originals: dict[tuple[str, ...], DictConfig] = {}  # by twin key, never handed out

    def compose(self, master_config: DictConfig, overrides: list[str]) -> None:
        """Compose one job's config (raising as Hydra does on a bad one), from its twin's where
        there is one; keep it while room."""
        parsed = self.parser.parse_overrides(overrides)
        plain = [o for o in parsed if self.is_plain_value(o)]
        key = tuple(o.key_or_group if o in plain else o.input_line for o in parsed)
        if key in self.originals:
            config = twin_config(self.originals[key], parsed, plain, master_config)
        else:
            config = self.loader.load_sweep_config(master_config, overrides)
            if len(self.originals) < self.keep:
                self.originals[key] = copy.deepcopy(config)
        if self.count < self.keep:
            self.kept.setdefault(tuple(overrides), deque()).append(config)
            self.count += 1

    def is_plain_value(self, override: Override) -> bool:
        """Whether the override sets one value: not a config group, nor `+`, `~`, `@` or
        `hydra.`, nor a dict or list (which would merge into the twin's)."""
        return (override.type == OverrideType.CHANGE and override.package is None
                and override.value_type == ValueType.ELEMENT
                and not override.is_hydra_override()
                and isinstance(override.value(), PLAIN_VALUES)
                and not self.loader.repository.group_exists(override.key_or_group))

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


def twin_config(original: DictConfig, parsed: list[Override], plain: list[Override],
                master_config: DictConfig) -> DictConfig:
    """A copy of the twin's config with this job's plain values (`plain`, among all its
    `parsed` overrides), task overrides and `override_dirname`, set as Hydra's
    `load_sweep_config` sets them."""
    config = copy.deepcopy(original)
    compat.hydra_apply_overrides(plain, config)
    task = [o for o in parsed if not o.is_hydra_override()]
    naming = config.hydra.job.config.override_dirname
    with open_dict(config.hydra):
        config.hydra.overrides.task = [o.input_line for o in task]
        config.hydra.job.override_dirname = compat.hydra_overrides_dirname(
            overrides=task, kv_sep=naming.kv_sep, item_sep=naming.item_sep,
            exclude_keys=naming.exclude_keys)
    OmegaConf.copy_cache(from_config=master_config, to_config=config)
    return config


class ComposeOnceSweeper(compat.hydra_basic_sweeper()):
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
        if config.hydra.launcher._target_ == compat.HYDRA_IN_PROCESS_LAUNCHER:
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
