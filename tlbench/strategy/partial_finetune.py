"""Partial fine-tuning: the head on the frozen base, then the top stages (or the layers from
`fine_tune_at` on) unfrozen at a lower learning rate (the Keras guide's two phases); and the
pieces strategies that leave a frozen bottom share: the cut, the cached-cut route and the top."""

from __future__ import annotations

from dataclasses import dataclass

from tlbench import registry
from tlbench.backbone import unfreeze_top
from tlbench.config import RunConfig, StrategyConfig
from tlbench.errors import check
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
from tlbench.training.plan import keep


@dataclass(kw_only=True)
class PartialFinetuneConfig(StrategyConfig):
    """Head first on a frozen base, then the top stages unfrozen at a lower learning rate."""

    unfreeze_blocks: int | None
    unfreeze_fraction: float | None
    fine_tune_at: int | None
    lr_scale: float
    head_epochs: int | None
    finetune_epochs: int | None

    def __post_init__(self) -> None:
        depths = {"unfreeze_blocks": self.unfreeze_blocks,
                  "unfreeze_fraction": self.unfreeze_fraction, "fine_tune_at": self.fine_tune_at}
        chosen = [key for key, value in depths.items() if value is not None]
        key = chosen[-1] if chosen else "unfreeze_blocks"
        check(len(chosen) == 1, f"strategy.{key}", depths[key],
              "exactly one of strategy.unfreeze_blocks, strategy.unfreeze_fraction and "
              f"strategy.fine_tune_at set (set: {', '.join(chosen) or 'none'}; null the others)")
        if self.unfreeze_fraction is not None:
            check(0 < self.unfreeze_fraction <= 1, "strategy.unfreeze_fraction",
                  self.unfreeze_fraction, "a float in (0, 1]")
        if self.fine_tune_at is not None:
            check(self.fine_tune_at >= 0, "strategy.fine_tune_at", self.fine_tune_at,
                  "a layer index, 0 or more")
        check_phase_settings(self, ("head_epochs", "finetune_epochs"))


def check_phase_settings(config, epoch_keys: tuple[str, ...]) -> None:
    """A positive lr_scale, and each epoch count null or at least 1."""
    check(config.lr_scale > 0, "strategy.lr_scale", config.lr_scale, "a positive float")
    for key in epoch_keys:
        value = getattr(config, key)
        check(value is None or value >= 1, f"strategy.{key}", value, "null or at least 1")


def check_stages(run: RunConfig, key: str, blocks: int | None) -> None:
    """A stage count, where set, that the backbone has."""
    stages = len(run.backbone.entry().stages)
    if blocks is not None:
        check(1 <= blocks <= stages, f"strategy.{key}", blocks,
              f"1 to {stages}: {run.backbone.name} has {stages} stages")


def stage_route(run: RunConfig, entry, blocks: int | None, why_not: str) -> Route:
    """Cached activations at the cut below the top `blocks` stages, when there is a frozen
    bottom of whole stages; else images (`why_not` says why, when blocks is None)."""
    route = cached_route(run, "cut")
    if route.inputs == "images":
        return route
    if blocks is None:
        return Route("images", why_not)
    if blocks == len(entry.stages):
        return Route("images", "every stage is unfrozen: nothing frozen to cache")
    if not entry.cut_at_one_tensor:
        return Route("images", f"no single tensor separates {entry.name}'s stages (parallel "
                               "branches cross them): nothing to cache at the cut")
    return route


def stage_cut(base, entry, blocks: int) -> str:
    """The name of the last layer below the top `blocks` stages."""
    first_stage, stages = len(entry.stages) - blocks + 1, entry.stages_in(base)
    first = next(i for i, layer in enumerate(base.layers)
                 if stages.get(layer.name, 0) >= first_stage)
    return base.layers[first - 1].name


def top_with_head(base, cut: str, classifier):
    """The base from the cut's activations up (BatchNorm in inference mode), pooled, into the
    classifier: the model trained on cached activations."""
    import keras

    top = keras.Model(base.get_layer(cut).output, base.output)
    inputs = keras.Input(shape=top.input_shape[1:])
    pooled = keras.layers.GlobalAveragePooling2D(name="head_pool")(top(inputs, training=False))
    return keras.Model(inputs, classifier(pooled))


def head_on_features(base, classifier):
    """The classifier alone on pooled features of the base."""
    import keras

    return keras.Sequential([keras.Input(shape=(base.output.shape[-1],)), classifier])


def unfreeze_from(base, index: int):
    """A phase action, the Keras tutorial's `fine_tune_at`: layers from `index` on train, those
    below stay frozen; BatchNorm stays frozen."""
    import keras

    check(index < len(base.layers), "strategy.fine_tune_at", index,
          f"a layer index below {len(base.layers)} (the base's layer count)")

    def action() -> None:
        base.trainable = True
        for position, layer in enumerate(base.layers):
            is_bn = isinstance(layer, keras.layers.BatchNormalization)
            layer.trainable = position >= index and not is_bn

    return action


@registry.STRATEGIES.entry("partial_finetune")
class PartialFinetune(Strategy):
    """Phase 1 trains the head on the frozen base; phase 2 unfreezes the top stages (or the top
    fraction of weighted layers, or the layers from index fine_tune_at on) and recompiles at
    trainer.lr x lr_scale.

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
        check_stages(run, "unfreeze_blocks", run.strategy.unfreeze_blocks)

    def route(self, run: RunConfig, entry) -> Route:
        """Cached activations at the cut, when the frozen bottom is whole stages."""
        key = "unfreeze_fraction" if self.config.fine_tune_at is None else "fine_tune_at"
        return stage_route(run, entry, self.config.unfreeze_blocks,
                           f"{key} may cut inside a block: no cached cut")

    def cut(self, base, entry) -> str:
        """The name of the last layer below the top unfreeze_blocks stages."""
        return stage_cut(base, entry, self.config.unfreeze_blocks)

    def phases(self, base, entry, trainer, head_phase: Phase) -> list[Phase]:
        """Head phase, then the fine-tune phase at the scaled learning rate."""
        return [head_phase, Phase("finetune", self.config.finetune_epochs or trainer.epochs,
                                  trainer.lr * self.config.lr_scale, self.unfreeze(base, entry),
                                  inputs=top_inputs(head_phase))]

    def unfreeze(self, base, entry):
        """A phase action unfreezing the configured top of the base (BatchNorm stays frozen)."""
        if self.config.fine_tune_at is not None:
            return unfreeze_from(base, self.config.fine_tune_at)

        def action() -> None:
            unfreeze_top(base, entry, self.config.unfreeze_blocks, self.config.unfreeze_fraction)

        return action

    def plan(self, base, entry, n_classes, trainer) -> Plan:
        """The base inside the model, every phase on images."""
        model = with_head(base, n_classes, self.config.head, base_training=False,
                          augment=trainer.augment)
        head_phase = Phase("head", self.config.head_epochs or trainer.epochs, trainer.lr,
                           freeze(base))
        return Plan(model, self.phases(base, entry, trainer, head_phase))

    def plan_on_frozen(self, prepared, facts, inputs) -> Plan:
        """The head on pooled features, then the top stages and head on the cut activations;
        the models an earlier run of the process compiled for the same backbone, cut, head and
        precision may train in their place."""
        base, entry, trainer = prepared.base, prepared.entry, prepared.config.trainer
        n_classes, cut = inputs["features"].n_classes, self.cut(base, entry)
        classifier = head_layers(n_classes, self.config.head)
        full = with_head(base, n_classes, self.config.head, base_training=False,
                         classifier=classifier)
        base.trainable = False
        head_phase = Phase("head", self.config.head_epochs or trainer.epochs, trainer.lr, keep,
                           head_on_features(base, classifier), "features")
        return Plan(top_with_head(base, cut, classifier),
                    self.phases(base, entry, trainer, head_phase), inputs="cut", full_model=full,
                    reuse_key=(self.name, entry.name, cut, self.config.unfreeze_blocks,
                               inputs["cut"].x_train.shape[1:], n_classes,
                               repr(self.config.head), trainer.precision))


def top_inputs(head_phase: Phase) -> str:
    """What the phases after the head train on: images, or the cached cut activations."""
    return "images" if head_phase.inputs == "images" else "cut"
