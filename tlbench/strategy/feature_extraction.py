"""Feature extraction: freeze the base, run it in inference mode, train only a new head."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tlbench import registry
from tlbench.config import RunConfig, StrategyConfig
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

log = logging.getLogger("tlbench")


@dataclass(kw_only=True)
class FeatureExtractionConfig(StrategyConfig):
    """Frozen base in inference mode, new head trained."""


@registry.STRATEGIES.entry("feature_extraction")
class FeatureExtraction(Strategy):
    """Freeze the base, call it with training=False (BatchNorm in inference mode), train a head.

    On cached pooled features the head trains alone; head=logreg fits a linear probe on them.
    """

    name = "feature_extraction"
    Config = FeatureExtractionConfig
    trains_base = False

    def route(self, run: RunConfig, entry) -> Route:
        """Cached pooled features; required where there is no network to run or the head is a
        probe fitted once."""
        if not entry.trainable or self.config.head.frozen_features_only:
            needs = f"backbone={entry.name}" if not entry.trainable else \
                f"head={self.config.head.name}"
            return Route("features", f"frozen features (required by {needs})")
        return cached_route(run, "features")

    def plan(self, base, entry, n_classes, trainer) -> Plan:
        """The frozen base inside the model, a new head on top."""
        model = with_head(base, n_classes, self.config.head, base_training=False,
                          augment=trainer.augment)
        return Plan(model, [Phase("head", trainer.epochs, trainer.lr, freeze(base))])

    def plan_on_frozen(self, prepared, facts, inputs) -> Plan:
        """The head alone on cached pooled features, the frozen base's parameters counted from
        its recorded facts (the base is not built); a head compiled earlier in the process for
        the same shapes and settings may train in its place."""
        import keras

        trainer, data = prepared.config.trainer, inputs["features"]
        n_features = data.x_train.shape[1]
        head = keras.Sequential([keras.Input(shape=(n_features,)),
                                 head_layers(data.n_classes, self.config.head)],
                                name="head_on_features")
        return Plan(head, [Phase("head", trainer.epochs, trainer.lr, keep, inputs="features")],
                    inputs="features", frozen_params=facts.params,
                    reuse_key=(n_features, data.n_classes, repr(self.config.head),
                               trainer.precision))

    def fit_frozen(self, prepared, facts, inputs):
        """A Keras head through the trainer, or a head fitted once on the frozen features (its
        registered `fit`, as head=logreg's linear probe)."""
        head = self.config.head
        fit = registry.HEADS[head.name].fit
        if fit is None:
            return super().fit_frozen(prepared, facts, inputs)
        log.info("strategy %s: head %s fitted once on frozen features", self.name, head.name)
        result = fit(inputs["features"], head, facts.params, prepared.config.seed)
        result.summary = facts.summary
        return result
