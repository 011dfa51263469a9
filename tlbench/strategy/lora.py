"""LoRA (Hu et al. 2022) through Keras' `enable_lora`: low-rank updates on the Dense and
convolution layers of the top stages (or of the whole base), trained with a new head."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from tlbench import registry
from tlbench.config import RunConfig, StrategyConfig
from tlbench.errors import check
from tlbench.strategy.base import Phase, Plan, Route, Strategy, head_layers, with_head
from tlbench.strategy.partial_finetune import check_stages, stage_cut, stage_route, top_with_head


@dataclass(kw_only=True)
class LoraConfig(StrategyConfig):
    """Rank-`rank` updates scaled by alpha / rank on the top `blocks` stages (null: all)."""

    blocks: int | None
    rank: int
    alpha: float

    def __post_init__(self) -> None:
        check(self.rank >= 1, "strategy.rank", self.rank, "at least 1")
        check(self.alpha > 0, "strategy.alpha", self.alpha, "a positive float")


@registry.STRATEGIES.entry("lora")
class Lora(Strategy):
    """`enable_lora(rank, lora_alpha=alpha)` on every layer of the chosen stages that supports it
    (Dense, EinsumDense, Embedding, convolutions; not depthwise ones), then one phase at
    trainer.lr in which only the LoRA factors and the new head train: kernels, biases and every
    other layer stay frozen. `merge` folds the factors into the kernels.

    BatchNorm: frozen and in inference mode (the base is called with training=False). With
    `blocks` set, the stages below them never train: they run once, into the cached cut.
    """

    name = "lora"
    Config = LoraConfig

    @classmethod
    def validate(cls, run: RunConfig) -> None:
        """The stage count must exist in the backbone."""
        super().validate(run)
        check_stages(run, "blocks", run.strategy.blocks)

    def route(self, run: RunConfig, entry) -> Route:
        """Cached activations below the top `blocks` stages; images when LoRA spans the base."""
        return stage_route(run, entry, self.config.blocks,
                           "blocks=null: LoRA on every stage, nothing frozen to cache")

    def cut(self, base, entry) -> str:
        """The name of the last layer below the top `blocks` stages."""
        return stage_cut(base, entry, self.config.blocks)

    def plan(self, base, entry, n_classes, trainer) -> Plan:
        """LoRA on the base inside the model; one phase on images."""
        action = self.adapt(base, entry)
        model = with_head(base, n_classes, self.config.head, base_training=False,
                          augment=trainer.augment)
        return Plan(model, [Phase("lora", trainer.epochs, trainer.lr, action)])

    def plan_on_frozen(self, prepared, facts, inputs) -> Plan:
        """LoRA on the top stages, trained with the head on the cached cut activations."""
        base, entry, trainer = prepared.base, prepared.entry, prepared.config.trainer
        n_classes = inputs["features"].n_classes
        action = self.adapt(base, entry)
        classifier = head_layers(n_classes, self.config.head)
        full = with_head(base, n_classes, self.config.head, base_training=False,
                         classifier=classifier)
        top = top_with_head(base, self.cut(base, entry), classifier)
        return Plan(top, [Phase("lora", trainer.epochs, trainer.lr, action, inputs="cut")],
                    inputs="cut", full_model=full)

    def adapt(self, base, entry):
        """Enable LoRA on the chosen layers; returns the phase action that leaves only their
        factors trainable in the base."""
        chosen = lora_layers(base, entry, self.config.blocks)
        for layer in chosen:
            layer.enable_lora(self.config.rank, lora_alpha=self.config.alpha)

        def action() -> None:
            base.trainable = True
            for layer in base.layers:
                layer.trainable = layer in chosen
            for layer in chosen:
                for variable in layer.weights:
                    variable.trainable = variable.name.startswith("lora_kernel_")

        return action


def lora_layers(base, entry, blocks: int | None) -> list:
    """The base's layers that support LoRA, in the top `blocks` stages (None: anywhere)."""
    first_stage = 1 if blocks is None else len(entry.stages) - blocks + 1
    stages = entry.stages_in(base)
    return [layer for layer in base.layers if hasattr(layer, "enable_lora")
            and (blocks is None or stages.get(layer.name, 0) >= first_stage)]


def merge(model):
    """A copy of the model without LoRA, its kernels the trained ones plus alpha / rank x A B
    (Keras writes LoRA layers' kernels merged when saving weights)."""
    import keras

    merged = keras.Model.from_config(without_lora(model.get_config()))
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "merged.weights.h5")
        model.save_weights(path)
        merged.load_weights(path)
    return merged


def without_lora(config):
    """A layer or model config with every lora_rank and lora_alpha setting removed."""
    if isinstance(config, dict):
        return {key: without_lora(value) for key, value in config.items()
                if key not in ("lora_rank", "lora_alpha")}
    if isinstance(config, list):
        return [without_lora(value) for value in config]
    return config
