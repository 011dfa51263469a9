"""Gradual unfreezing: the head on the frozen base, then one more stage per phase, top down, each
phase recompiled at a lower learning rate."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import registry
from tlbench.backbone import unfreeze_top
from tlbench.config import RunConfig, StrategyConfig
from tlbench.errors import check
from tlbench.strategy.base import Route
from tlbench.strategy.partial_finetune import (
    PartialFinetune,
    check_phase_settings,
    stage_route,
    top_inputs,
)
from tlbench.training.plan import Phase


@dataclass(kw_only=True)
class GradualUnfreezeConfig(StrategyConfig):
    """Head first, then the top stage, the top two, ... the top unfreeze_blocks stages."""

    unfreeze_blocks: int
    lr_scale: float
    lr_decay: float
    head_epochs: int | None
    phase_epochs: int | None

    def __post_init__(self) -> None:
        check(0 < self.lr_decay <= 1, "strategy.lr_decay", self.lr_decay, "a float in (0, 1]")
        check_phase_settings(self, ("head_epochs", "phase_epochs"))


@registry.STRATEGIES.entry("gradual_unfreeze")
class GradualUnfreeze(PartialFinetune):
    """Phase `head` trains the head on the frozen base; phase `stage5` adds the top stage at
    trainer.lr x lr_scale, `stage4` the next one down at lr_decay times that, and so on until
    unfreeze_blocks stages train. Each phase recompiles, with its own epochs.

    BatchNorm: inference mode in every phase (the base is called with training=False and its
    BatchNorm layers stay frozen). Below the deepest unfrozen stage the base never trains: the
    head phase reads cached pooled features and the later ones cached activations at that cut.
    """

    name = "gradual_unfreeze"
    Config = GradualUnfreezeConfig

    def route(self, run: RunConfig, entry) -> Route:
        """Cached activations at the cut below the deepest stage unfrozen, unless all are."""
        return stage_route(run, entry, self.config.unfreeze_blocks, "")

    def phases(self, base, entry, trainer, head_phase: Phase) -> list[Phase]:
        """The head phase, then one phase per stage unfrozen, the learning rate decaying."""
        epochs = self.config.phase_epochs or trainer.epochs
        stages = len(entry.stages)
        return [head_phase, *(
            Phase(f"stage{stages - blocks + 1}", epochs,
                  trainer.lr * self.config.lr_scale * self.config.lr_decay ** (blocks - 1),
                  unfreeze_stages(base, entry, blocks), inputs=top_inputs(head_phase))
            for blocks in range(1, self.config.unfreeze_blocks + 1))]

    def train(self, prepared):
        """Train as PartialFinetune does; log the epochs each phase ran as `epochs_<phase>`."""
        result = super().train(prepared)
        for epoch in result.history:
            key = f"epochs_{epoch['phase']}"
            result.metrics[key] = result.metrics.get(key, 0) + 1
        return result


def unfreeze_stages(base, entry, blocks: int):
    """A phase action making the top `blocks` stages trainable (BatchNorm stays frozen)."""
    def action() -> None:
        unfreeze_top(base, entry, blocks, None)

    return action
