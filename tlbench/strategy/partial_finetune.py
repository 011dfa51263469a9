"""Partial fine-tuning: the head on the frozen base, then the top stages unfrozen at a lower
learning rate (the Keras guide's two phases)."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import registry
from tlbench.backbone import unfreeze_top
from tlbench.config import RunConfig, StrategyConfig
from tlbench.errors import check
from tlbench.plan import keep
from tlbench.strategy.base import (
    Phase,
    Plan,
    Route,
    Strategy,
    cached_route,
    freeze,
    head_layers,
    with_head,
)


@dataclass(kw_only=True)
class PartialFinetuneConfig(StrategyConfig):
    """Head first on a frozen base, then the top stages unfrozen at a lower learning rate."""

    unfreeze_blocks: int | None
    unfreeze_fraction: float | None
    lr_scale: float
    head_epochs: int | None
    finetune_epochs: int | None

    def __post_init__(self) -> None:
        check((self.unfreeze_blocks is None) != (self.unfreeze_fraction is None),
              "strategy.unfreeze_blocks", self.unfreeze_blocks,
              "exactly one of strategy.unfreeze_blocks and strategy.unfreeze_fraction set")
        if self.unfreeze_fraction is not None:
            check(0 < self.unfreeze_fraction <= 1, "strategy.unfreeze_fraction",
                  self.unfreeze_fraction, "a float in (0, 1]")
        check(self.lr_scale > 0, "strategy.lr_scale", self.lr_scale, "a positive float")
        for key in ("head_epochs", "finetune_epochs"):
            value = getattr(self, key)
            check(value is None or value >= 1, f"strategy.{key}", value, "null or at least 1")


@registry.STRATEGIES.entry("partial_finetune")
class PartialFinetune(Strategy):
    """Phase 1 trains the head on the frozen base; phase 2 unfreezes the top stages (or the top
    fraction of weighted layers) and recompiles at trainer.lr x lr_scale.

    BatchNorm: inference mode in both phases (the base is called with training=False and its
    BatchNorm layers stay frozen). With unfreeze_blocks, the bottom stays frozen: phase 1 trains
    on cached pooled features and phase 2 on cached activations at the cut, with the same layers.
    """

    name = "partial_finetune"
    Config = PartialFinetuneConfig

    @classmethod
    def validate(cls, run: RunConfig) -> None:
        """The unfreeze depth must exist in the backbone."""
        super().validate(run)
        stages = len(registry.BACKBONES[run.backbone.name].stages)
        blocks = run.strategy.unfreeze_blocks
        if blocks is not None:
            check(1 <= blocks <= stages, "strategy.unfreeze_blocks", blocks,
                  f"1 to {stages}: {run.backbone.name} has {stages} stages")

    def route(self, run: RunConfig, entry) -> Route:
        """Cached activations at the cut, when the frozen bottom is whole stages."""
        route = cached_route(run, "cut")
        if route.inputs == "images":
            return route
        if self.config.unfreeze_blocks is None:
            return Route("images", "unfreeze_fraction may cut inside a block: no cached cut")
        if self.config.unfreeze_blocks == len(entry.stages):
            return Route("images", "every stage is unfrozen: nothing frozen to cache")
        if not entry.cut_at_one_tensor:
            return Route("images", f"{entry.name}'s cells take two inputs: no single tensor to "
                                   "cache at the cut")
        return route

    def cut(self, base, entry) -> str:
        """The name of the last layer below the top unfreeze_blocks stages."""
        first_stage = len(entry.stages) - self.config.unfreeze_blocks + 1
        first = next(i for i, layer in enumerate(base.layers)
                     if (entry.stage_of(layer.name) or 0) >= first_stage)
        return base.layers[first - 1].name

    def phases(self, trainer, unfreeze, head_phase: Phase) -> list[Phase]:
        """Head phase, then the fine-tune phase at the scaled learning rate."""
        return [head_phase, Phase("finetune", self.config.finetune_epochs or trainer.epochs,
                                  trainer.lr * self.config.lr_scale, unfreeze,
                                  inputs=head_phase.inputs if head_phase.inputs == "images"
                                  else "cut")]

    def unfreeze(self, base, entry):
        """A phase action unfreezing the configured top of the base (BatchNorm stays frozen)."""
        def action() -> None:
            unfreeze_top(base, entry, self.config.unfreeze_blocks, self.config.unfreeze_fraction)

        return action

    def plan(self, base, entry, n_classes, trainer) -> Plan:
        """The base inside the model, both phases on images."""
        model = with_head(base, n_classes, self.config.head, base_training=False,
                          augment=trainer.augment)
        head_phase = Phase("head", self.config.head_epochs or trainer.epochs, trainer.lr,
                           freeze(base))
        return Plan(model, self.phases(trainer, self.unfreeze(base, entry), head_phase))

    def plan_on_frozen(self, base, entry, n_classes, inputs, trainer) -> Plan:
        """The head on pooled features, then the top stages and head on the cut activations."""
        import keras

        cut = self.cut(base, entry)
        classifier = head_layers(n_classes, self.config.head)
        head = keras.Sequential([keras.Input(shape=(base.output.shape[-1],)), classifier])
        top = keras.Model(base.get_layer(cut).output, base.output)
        top_inputs = keras.Input(shape=top.input_shape[1:])
        pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(top(top_inputs,
                                                                           training=False))
        top_and_head = keras.Model(top_inputs, classifier(pooled))
        full = with_head(base, n_classes, self.config.head, base_training=False,
                         classifier=classifier)
        base.trainable = False
        head_phase = Phase("head", self.config.head_epochs or trainer.epochs, trainer.lr, keep,
                           head, "features")
        return Plan(top_and_head, self.phases(trainer, self.unfreeze(base, entry), head_phase),
                    inputs="cut", full_model=full)
