"""The tlbench sweeper: each job composed once, with the config Hydra's basic sweeper gives it."""

from __future__ import annotations

import pytest
from hydra import initialize_config_module
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.plugins import Plugins
from hydra.errors import ConfigCompositionException
from hydra.types import HydraContext, RunMode
from omegaconf import OmegaConf

GRID = ["trainer.lr=0.1,0.2,0.1", "seed=0,1"]


class CountingLoader:
    """Hydra's config loader, counting the job configs it composes."""

    def __init__(self, loader) -> None:
        self.loader, self.composed = loader, 0

    def load_sweep_config(self, master_config, sweep_overrides):
        self.composed += 1
        return self.loader.load_sweep_config(master_config, sweep_overrides)

    def __getattr__(self, name):
        return getattr(self.loader, name)


def sweep(tmp_path, grid: list[str], *hydra_overrides: str) -> tuple[list[dict], int]:
    """Run the grid as Hydra does (its sweeper from the config, the in-process launcher) with a
    task that records each job's config (its whole hydra node too, but for the choice of sweeper
    and the timestamped run folder, which a multirun does not use); returns them and how many
    job configs were composed."""
    seen: list[dict] = []

    def task(cfg) -> None:
        hydra = OmegaConf.to_container(HydraConfig.get(), resolve=True)
        del hydra["sweeper"], hydra["runtime"]["choices"]["hydra/sweeper"], hydra["run"]
        overrides = hydra["overrides"]
        overrides["hydra"] = [line for line in overrides["hydra"] if line != "hydra/sweeper=basic"]
        seen.append(OmegaConf.to_container(cfg, resolve=True) | {"hydra": hydra})

    with initialize_config_module(config_module="tlbench.conf", version_base="1.3"):
        loader = CountingLoader(GlobalHydra.instance().hydra.config_loader)
        master = loader.load_configuration(
            "config", [f"hydra.sweep.dir={tmp_path}", *hydra_overrides], RunMode.MULTIRUN)
        context = HydraContext(config_loader=loader, callbacks=Callbacks())
        Plugins.instance().instantiate_sweeper(
            config=master, hydra_context=context, task_function=task).sweep(grid)
    return seen, loader.composed


def test_each_job_is_composed_once_into_the_basic_sweepers_config(tmp_path):
    ours, composed = sweep(tmp_path, GRID)
    basic, basic_composed = sweep(tmp_path, GRID, "hydra/sweeper=basic")
    assert (composed, basic_composed) == (1, 12)  # the first job; the others are its twins
    assert [(job["trainer"]["lr"], job["seed"]) for job in ours] == \
        [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1), (0.1, 0), (0.1, 1)]
    assert ours == basic


@pytest.mark.parametrize(("grid", "composed"), [
    (["backbone=mobilenetv2,resnet50", "trainer.lr=0.1,0.2", "data.train_size=10,all"], 2),
    (["strategy=feature_extraction,partial_finetune", "seed=0,1", "+trainer.note=a,b"], 4),
    (["trainer.patience=3,null", "hydra.job.chdir=false,true", "data.train_size=0.5,20"], 2),
])
def test_twins_differ_only_in_plain_values(tmp_path, grid, composed):
    """Config groups, `+` and `hydra.` overrides are composed by Hydra; values set on a copy."""
    ours, count = sweep(tmp_path, grid)
    basic, _ = sweep(tmp_path, grid, "hydra/sweeper=basic")
    assert count == composed and len(ours) == 8
    assert ours == basic


@pytest.mark.parametrize(("options", "composed"), [
    (["hydra.sweeper.keep=2"], 1 + 4),  # the jobs beyond the kept ones are composed again
    (["hydra.sweeper.keep=2", "hydra.sweeper.max_batch_size=2"], 1),  # each batch kept whole
])
def test_kept_configs_are_bounded(tmp_path, options, composed):
    ours, count = sweep(tmp_path, GRID, *options)
    assert count == composed
    assert [(job["trainer"]["lr"], job["seed"]) for job in ours] == \
        [(0.1, 0), (0.1, 1), (0.2, 0), (0.2, 1), (0.1, 0), (0.1, 1)]


def test_a_bad_job_fails_the_sweep_before_any_job_runs(tmp_path):
    with pytest.raises(ConfigCompositionException, match="nope"):
        sweep(tmp_path, ["backbone=mobilenetv2,nope"])
    assert not list(tmp_path.glob("*/.hydra"))
