"""The Strategy base class, and the Keras pieces strategies share: the head, augmentation,
freezing.

A strategy is one class: its config, which inputs it trains on (images, or the cached outputs of
the frozen part of the base), the model and phases it builds for each, and whether it starts from
the pretrained weights. `train` is the same recipe for all: build the plan on the inputs the route
picks, fit it, evaluate it. Keras is imported only when a model is built, so configs validate
before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from tlbench import compat, registry, runtime
from tlbench.backbone import BackboneSpec, on_pixels
from tlbench.backbone.cost import multiply_adds
from tlbench.config import DenseHeadConfig, RunConfig, StrategyConfig, TrainerConfig
from tlbench.errors import check
from tlbench.frozen import cache
from tlbench.frozen.base_facts import BaseFacts, base_facts
from tlbench.strategy.heads import STANDARDIZE
from tlbench.training.plan import Phase, Plan

if TYPE_CHECKING:
    from tlbench.data import Dataset
    from tlbench.prepare import Prepared
    from tlbench.training.train import RunResult

log = logging.getLogger("tlbench")


@dataclass(frozen=True)
class Route:
    """What the trainable part is fed: `images` (the whole model), `features` (pooled frozen
    outputs) or `cut` (frozen activations where the unfrozen top begins), and why."""

    inputs: str
    reason: str


class Strategy:
    """Base class: subclasses set `Config` and build their plans; registered by name."""

    name: ClassVar[str]
    Config: ClassVar[type[StrategyConfig]]
    pretrained: ClassVar[bool] = True
    """Starts from backbone.weights (the scratch control does not)."""
    trains_base: ClassVar[bool] = True
    """Some layer of the base trains, so the backbone must have trainable layers."""

    def __init__(self, config: StrategyConfig) -> None:
        self.config = config

    @classmethod
    def validate(cls, run: RunConfig) -> None:
        """Cross-field checks, run once when the config is parsed: a backbone without trainable
        layers, or a head fitted once on frozen features, needs a frozen-base strategy."""
        entry, head = run.backbone.entry(), run.strategy.head
        if entry.trainable and not head.frozen_features_only:
            return
        key, value = ("backbone", entry.name) if not entry.trainable else ("head", head.name)
        frozen = "/".join(name for name, strategy in registry.STRATEGIES.items()
                          if not strategy.trains_base)
        check(not cls.trains_base and not run.trainer.augment, key, value,
              f"strategy={frozen} with trainer.augment=false (only frozen features, fitted once)")

    def weights(self, entry: BackboneSpec, configured: str | None) -> str | None:
        """The weights this run's base starts from."""
        return configured if self.pretrained and entry.has_weights else None

    def route(self, run: RunConfig, entry: BackboneSpec) -> Route:
        """Images: the whole network trains."""
        return Route("images", f"{self.name} trains the whole network")

    def cut(self, base, entry: BackboneSpec) -> str:
        """The layer whose output feeds the trainable top (route `cut` only)."""
        raise NotImplementedError(f"{self.name} has no cut")

    def plan(self, base, entry: BackboneSpec, n_classes: int, trainer: TrainerConfig) -> Plan:
        """The whole model and its phases, trained on images."""
        raise NotImplementedError

    def plan_on_frozen(self, prepared: Prepared, facts: BaseFacts,
                       inputs: dict[str, Dataset]) -> Plan:
        """The trainable part and its phases, trained on cached frozen outputs (`facts`: the
        base's recorded facts; `prepared.base` builds the base if the plan needs it)."""
        raise NotImplementedError

    def fit_frozen(self, prepared: Prepared, facts: BaseFacts,
                   inputs: dict[str, Dataset]) -> RunResult:
        """Fit and evaluate the plan on cached frozen outputs."""
        from tlbench.training import train

        run = prepared.config
        plan = self.plan_on_frozen(prepared, facts, inputs)
        standardize_head(plan, lambda: inputs["features"].x_train.load())
        self.log_phases(plan)
        result = train.train_and_evaluate(plan, inputs, run.trainer, run.seed)
        result.summary = train.model_summary(plan.full_model) if plan.full_model is not None \
            else f"{facts.summary}\nOn its cached outputs:\n{train.model_summary(plan.model)}"
        return result

    def train(self, prepared: Prepared) -> RunResult:
        """Build the plan on the inputs the route picks, fit it, evaluate it. The head is
        initialised from the run's seed, whether or not the base was built before it."""
        from tlbench.training import train

        run, entry = prepared.config, prepared.entry
        route = self.route(run, entry)
        log.info("backbone %s (weights=%s, %dpx); trains on %s: %s", entry.name,
                 prepared.weights, run.backbone.input_size, route.inputs, route.reason)
        if route.inputs == "images":
            base = prepared.base
            cost = {"flops": multiply_adds(base, run.backbone.input_size)}
            dataset = prepared.dataset()
            runtime.set_random_seed(run.seed)
            plan = self.plan(base, entry, dataset.n_classes, run.trainer)
            inner, plan.model = plan.model, on_pixels(entry, plan.model)  # takes uint8 pixels
            standardize_head(plan, lambda: train.predicted(
                cache.extractor(base, entry, cache.POOLED), dataset.x_train,
                run.trainer.batch_size))
            self.log_phases(plan)
            result = train.train_and_evaluate(plan, {"images": dataset}, run.trainer, run.seed)
            result.summary = f"{PIXELS_NOTE}{entry.preprocessing or entry.name}\n" \
                f"{train.model_summary(inner)}"
            result.metrics |= cost
            return result
        root = cache.cache_root(run.cache)
        facts = base_facts(lambda: prepared.base, entry, run.backbone.input_size,
                           prepared.origin, run.trainer.precision, root)
        cost = {"flops": facts.flops}
        taps = [cache.POOLED,
                *([self.cut(prepared.base, entry)] if route.inputs == "cut" else [])]
        frozen = cache.frozen_datasets(
            lambda: prepared.base, entry, prepared.source, prepared.splits,
            run.backbone.input_size, taps, root, run.trainer.batch_size, prepared.images,
            run.cache.fill_limit, facts, run.cache.dtype)
        inputs = {"features": frozen[0].data} | ({"cut": frozen[1].data} if len(frozen) > 1
                                                  else {})
        runtime.set_random_seed(run.seed)
        result = self.fit_frozen(prepared, facts, inputs)
        computed = sum(tap.computed for tap in frozen)
        if frozen[0].computed and frozen[0].cost:  # measured when the pooled rows were computed
            used = np.unique(np.concatenate(dataclasses.astuple(prepared.splits)))
            cost["forward_images_per_second"] = len(used) / frozen[0].cost
        result.metrics |= cost | {"cache_hit": float(root is not None and computed == 0),
                                  "frozen_rows_computed": computed,
                                  "feature_seconds": sum(tap.seconds for tap in frozen),
                                  "feature_cost_seconds": sum(tap.cost for tap in frozen),
                                  "feature_wait_seconds": sum(tap.waited for tap in frozen)}
        return result

    def log_phases(self, plan: Plan) -> None:
        """One line naming the strategy's phases, epochs and learning rates."""
        log.info("strategy %s: phases %s", self.name,
                 ", ".join(f"{p.name}({p.epochs} ep, lr={p.lr:g}, on {p.inputs})"
                           for p in plan.phases))


PIXELS_NOTE = "Fed uint8 pixels; cast to float32 and preprocessed inside the model: "


def standardize_head(plan: Plan, train_features: Callable[[], np.ndarray]) -> None:
    """Adapt the head's standardisation layers to the pooled features of the training split
    (computed only if the plan has such a layer); fixed afterwards, never fitted on val/test."""
    models = [plan.model, *(phase.model for phase in plan.phases if phase.model is not None)]
    layers = {id(layer): layer for model in models
              for layer in compat.walk_layers(model)
              if layer.name == STANDARDIZE}
    if layers:
        values = train_features()
        for layer in layers.values():
            layer.adapt(values)


def cached_route(run: RunConfig, inputs: str) -> Route:
    """`inputs` (cached frozen outputs), unless the cache is off or augmentation changes the
    frozen outputs every epoch."""
    if not run.cache.enabled:
        return Route("images", "cache.enabled=false: frozen base run every epoch")
    if run.trainer.augment:
        return Route("images", "trainer.augment=true: frozen outputs change every epoch, "
                               "no cache (full path)")
    return Route(inputs, "frozen outputs cached and reused")


def head_layers(n_classes: int, head: DenseHeadConfig):
    """The new classifier on pooled features, as the head's registered entry makes it."""
    return registry.HEADS[head.name].layers(n_classes, head)


def augmentation():
    """Random translation and zoom of up to 10%, active only while training."""
    import keras

    return keras.Sequential([keras.layers.RandomTranslation(0.1, 0.1, fill_mode="nearest"),
                             keras.layers.RandomZoom(0.1, fill_mode="nearest")],
                            name="augmentation")


def with_head(base, n_classes: int, head: DenseHeadConfig, base_training: bool | None,
              classifier=None, flat: bool = False, augment: bool = False):
    """Stack the classifier on the pooled (or flattened) base output, after random augmentation
    if asked; base_training=False keeps BatchNorm in inference mode."""
    import keras

    inputs = keras.Input(shape=base.input_shape[1:])
    x = base(augmentation()(inputs) if augment else inputs, training=base_training)
    x = (keras.layers.Flatten if flat else keras.layers.GlobalAveragePooling2D)(name="head_pool")(x)
    outputs = (classifier or head_layers(n_classes, head))(x)
    return keras.Model(inputs, outputs)


def freeze(base) -> Callable[[], None]:
    """A phase action that freezes the whole base."""

    def action() -> None:
        base.trainable = False

    return action


def unfreeze_all(base) -> Callable[[], None]:
    """A phase action that makes every layer of the base trainable."""

    def action() -> None:
        base.trainable = True

    return action


__all__ = ["Phase", "Plan", "Route", "Strategy", "augmentation", "cached_route",
           "freeze", "head_layers", "unfreeze_all", "with_head"]
