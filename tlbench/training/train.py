"""Train stage: seed, fit each phase with an epoch timer and early stopping, then evaluate.

`fit_seconds` is the wall time inside `model.fit` over all phases: forward and backward passes,
graph tracing and the per-epoch validation pass. It excludes data preparation, weight loading,
model construction, frozen features or activations read from (or computed for) the cache, which
are timed apart as `feature_seconds`, and the final evaluation. For head=logreg it is the
scikit-learn fits over the C grid.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from tlbench import runtime
from tlbench.config import LogregHeadConfig, TrainerConfig
from tlbench.data import Dataset
from tlbench.progress import epoch_line
from tlbench.rowcache import Rows
from tlbench.training import metrics
from tlbench.training.batches import batches, chained_batches
from tlbench.training.plan import Phase, Plan

log = logging.getLogger("tlbench")


def configure_runtime(trainer: TrainerConfig, seed: int, threads: int | None) -> None:
    """Seeds, thread pools, determinism and the precision policy for the next model. What
    survives its garbage collection (TensorFlow's, Keras', MLflow's modules) is then frozen out
    of later collections, so the next run's scans only what is newer (the collection took 0.5 s
    a run in a profiled sweep on 2 busy cores, 1 ms now). Earlier runs' objects are garbage by
    then, or referenced anyway."""
    runtime.configure(trainer.precision, trainer.deterministic, seed, threads)
    gc.freeze()


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of every epoch, validation pass included; with `progress` (what
    trains), also logs a line per epoch with the time left."""

    def __init__(self, progress: str | None = None, epochs: int = 0) -> None:
        super().__init__()
        self.seconds: list[float] = []
        self._start = 0.0
        self._progress, self._epochs = progress, epochs

    def on_epoch_begin(self, epoch, logs=None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        if self._progress:
            log.info(epoch_line(self._progress, self._epochs, self.seconds, logs or {}))


@dataclass
class RunResult:
    """What a run measured: metrics, per-epoch history and the confusion matrix."""

    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    confusion: np.ndarray | None = None
    summary: str = ""


def make_optimizer(name: str, lr) -> keras.optimizers.Optimizer:
    """A fresh optimizer of the configured kind; lr is a float or a learning-rate schedule."""
    classes = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
               "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}
    return classes[name](learning_rate=lr)


def model_summary(model: keras.Model) -> str:
    """Keras' layer summary of the model as plain text."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, **_: lines.append(line))
    return "\n".join(lines) + "\n"


def count_params(model: keras.Model, frozen: int = 0) -> dict[str, float]:
    """Total, trainable and non-trainable parameter counts as the model is now compiled, plus
    `frozen` non-trainable ones outside it."""
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    total = model.count_params() + frozen
    return {"params_total": total, "params_trainable": trainable,
            "params_non_trainable": total - trainable}


def _callbacks(trainer: TrainerConfig, timer: EpochTimer) -> list[keras.callbacks.Callback]:
    """The epoch timer plus early stopping on validation loss when patience is set."""
    callbacks: list[keras.callbacks.Callback] = [timer]
    if trainer.patience:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=trainer.patience, restore_best_weights=True))
    return callbacks


def fit(plan: Plan, inputs: dict[str, Dataset], trainer: TrainerConfig, seed: int,
        progress: str | None = None) -> tuple[dict[str, float], list[dict]]:
    """Run every phase: set trainable flags, recompile, fit. Returns timing/params and history;
    with `progress` (what trains), a log line per epoch."""
    epoch_seconds: list[list[float]] = []
    history: list[dict[str, float]] = []
    params: dict[str, float] = {}
    fit_seconds = 0.0
    reused = reuse_compiled(plan, trainer)
    for index, phase in enumerate(plan.phases):
        model, data = phase.model or plan.model, inputs[phase.inputs]
        phase.set_trainable()
        if not reused:
            model.compile(optimizer=make_optimizer(trainer.optimizer, phase.lr),
                          loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                          jit_compile=trainer.jit_compile,
                          steps_per_execution=steps_per_call(phase))
        params = count_params(plan.full_model or plan.model, plan.frozen_params)
        prefetch = phase.inputs != "features"
        train = batches(data.x_train, data.y_train, trainer.batch_size, seed + index, prefetch)
        val = batches(data.x_val, data.y_val, trainer.batch_size, prefetch=prefetch)
        timer = EpochTimer(progress, phase.epochs)
        start = time.perf_counter()
        result = model.fit(train, validation_data=val, epochs=phase.epochs, shuffle=False,
                           callbacks=_callbacks(trainer, timer), verbose=trainer.verbose)
        fit_seconds += time.perf_counter() - start
        epoch_seconds.append(timer.seconds)
        history.extend(_epochs(result.history, phase.name))
    if not reused:
        keep_compiled(plan, trainer)
    return _timing(epoch_seconds, fit_seconds, len(inputs[plan.inputs].y_train)) | params, history


HEAD_STEPS_PER_CALL = 64


def steps_per_call(phase: Phase) -> int:
    """Batches per call of the traced training (and validation) step: many for a head on
    cached features, where Python's per-batch overhead outweighs the step itself (measured 45%
    less time per `fit`), one elsewhere and on PyTorch (which only takes one). Each batch is
    the same step either way: the weights and metrics are the same."""
    many = phase.inputs == "features" and runtime.backend() != "torch"
    return HEAD_STEPS_PER_CALL if many else 1


COMPILED: dict[tuple, list[keras.Model]] = {}
"""Models compiled in this process, by their plan's reuse_key and training settings: the plan's
model, then each phase's own, as `plan_models` lists them. The oldest are dropped beyond
COMPILED_BYTES (the newest is always kept)."""

COMPILED_BYTES = 1 << 30


def plan_models(plan: Plan) -> list[keras.Model]:
    """The plan's model, then the models of the phases that fit their own."""
    return [plan.model, *(phase.model for phase in plan.phases if phase.model is not None)]


def _reuse_entry(plan: Plan, trainer: TrainerConfig) -> tuple | None:
    """The COMPILED key of a plan whose compiled models can train in place of its fresh ones:
    a reuse_key, a constant learning rate and a model of its own per phase (no recompiling
    after a change of trainable flags); not under loss scaling."""
    models = [id(phase.model or plan.model) for phase in plan.phases]
    if plan.reuse_key is None or trainer.precision == "mixed_float16" \
            or len(set(models)) < len(models) \
            or not all(isinstance(phase.lr, float | int) for phase in plan.phases):
        return None
    return (plan.reuse_key, trainer.optimizer, trainer.jit_compile, runtime.backend())


def reuse_compiled(plan: Plan, trainer: TrainerConfig) -> bool:
    """Put the models compiled by an earlier run of this process under the plan's reuse_key in
    place of the plan's fresh ones, given their weights (random-number states included) and
    fresh optimizer states at each phase's learning rate: they train exactly as the fresh
    models would, on the functions already traced (a head: 0.4 s a run on 2 cores)."""
    key = _reuse_entry(plan, trainer)
    twins = COMPILED.get(key) if key else None
    if twins is None:
        return False
    for fresh, twin in zip(plan_models(plan), twins, strict=True):
        for target, value in zip(twin.variables, fresh.variables, strict=True):
            target.assign(value.numpy())
    plan.model, own = twins[0], iter(twins[1:])
    for phase in plan.phases:
        phase.model = next(own) if phase.model is not None else None
        model = phase.model or plan.model
        for variable in model.optimizer.variables:  # step count, moments: zero, as when built
            variable.assign(np.zeros(variable.shape, variable.dtype))
        model.optimizer.learning_rate = phase.lr
    COMPILED[key] = COMPILED.pop(key)  # the most recently used, kept longest
    return True


def keep_compiled(plan: Plan, trainer: TrainerConfig) -> None:
    """Keep the plan's models, compiled and trained by `fit`, for later runs under the same
    key; drop the least recently used beyond COMPILED_BYTES."""
    key = _reuse_entry(plan, trainer)
    if key is None:
        return
    COMPILED[key] = plan_models(plan)
    while len(COMPILED) > 1 and sum(map(_held_bytes, COMPILED.values())) > COMPILED_BYTES:
        del COMPILED[next(iter(COMPILED))]


def _held_bytes(models: list[keras.Model]) -> int:
    """Bytes of the models' and their optimizers' variables (shared ones counted once)."""
    variables = {id(v): v for model in models
                 for v in [*model.variables, *getattr(model.optimizer, "variables", [])]}
    return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in variables.values())


def _epochs(history: dict[str, list[float]], phase: str) -> list[dict[str, float]]:
    """Keras' column-wise history as one dict per epoch."""
    length = len(next(iter(history.values()), []))
    return [{key: float(values[i]) for key, values in history.items()} | {"phase": phase}
            for i in range(length)]


def _timing(epoch_seconds: list[list[float]], fit_seconds: float, n_train: int) -> dict[str, float]:
    """First-epoch, steady-state (median of later epochs of every phase) and throughput figures."""
    later = [s for phase in epoch_seconds for s in phase[1:]]
    epochs_run = sum(len(phase) for phase in epoch_seconds)
    return {
        "fit_seconds": fit_seconds,
        "first_epoch_seconds": epoch_seconds[0][0],
        "steady_epoch_seconds": statistics.median(later) if later else epoch_seconds[0][0],
        "train_images_per_second": n_train * epochs_run / fit_seconds,
        "epochs_run": epochs_run,
    }


def evaluate(predict: Callable[[list[Rows]], list[np.ndarray]],
             data: Dataset) -> tuple[dict, np.ndarray]:
    """Accuracy on train/val/test, test macro-F1 and the test confusion matrix of a classifier
    (`predict` maps a list of splits' rows to their predicted classes), counted by
    tlbench.training.metrics."""
    train_pred, val_pred, test_pred = predict([data.x_train, data.x_val, data.x_test])
    confusion = metrics.confusion_counts(data.y_test, test_pred, data.n_classes)
    scores = {
        "train_accuracy": metrics.accuracy(data.y_train, train_pred),
        "val_accuracy": metrics.accuracy(data.y_val, val_pred),
        "test_accuracy": metrics.accuracy(data.y_test, test_pred),
        "test_macro_f1": metrics.macro_f1(confusion),
    }
    return scores, confusion


def keras_classes(model: keras.Model,
                  batch_size: int) -> Callable[[list[Rows]], list[np.ndarray]]:
    """The model's predicted class per row of each split, in inference mode, in one `predict`
    call over every split's batches in turn (each split batched alone, as by `batches`; three
    calls cost 5-10 ms more a run on 2 cores, Keras' own array adapter 0.2-0.5 s more a call)."""
    def predict(arrays: list[Rows]) -> list[np.ndarray]:
        classes = np.argmax(model.predict(chained_batches(arrays, batch_size), verbose=0), axis=1)
        return np.split(classes, np.cumsum([len(x) for x in arrays])[:-1])

    return predict


def predicted(model: keras.Model, rows: Rows, batch_size: int) -> np.ndarray:
    """The model's outputs for every row, in inference mode, a batch at a time."""
    return model.predict(chained_batches([rows], batch_size), verbose=0)


def sizes(data: Dataset) -> dict[str, float]:
    """Split sizes and class count, logged with every run."""
    return {"n_train": len(data.y_train), "n_val": len(data.y_val), "n_test": len(data.y_test),
            "n_classes": data.n_classes}


def train_and_evaluate(plan: Plan, inputs: dict[str, Dataset], trainer: TrainerConfig,
                       seed: int) -> RunResult:
    """Fit all phases, then evaluate in inference mode on the plan's inputs."""
    timing, history = fit(plan, inputs, trainer, seed)
    data = inputs[plan.inputs]
    scores, confusion = evaluate(keras_classes(plan.model, trainer.batch_size), data)
    return RunResult(metrics=timing | scores | sizes(data), history=history, confusion=confusion)


def linear_probe(c: float, head: LogregHeadConfig, seed: int) -> Pipeline:
    """Standardised features into multinomial logistic regression with inverse strength c."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=head.max_iter,
                                                              random_state=seed))


def train_logreg(features: Dataset, head: LogregHeadConfig, base_params: float,
                 seed: int) -> RunResult:
    """Fit the probe for every C of the grid, keep the best on val, evaluate it."""
    x_train, x_val = features.x_train.load(), features.x_val.load()
    start = time.perf_counter()
    history, best, best_accuracy = [], None, -1.0
    # One BLAS thread: these matrices are small, and OpenBLAS threads on busy cores were measured
    # 40x slower (0.5 s vs 22 s for the default grid on 100 x 1280 features).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is the user's budget
        for c in head.c_grid:
            probe = linear_probe(c, head, seed).fit(x_train, features.y_train)
            accuracy = metrics.accuracy(features.y_val, probe.predict(x_val))
            history.append({"logreg_c": c, "val_accuracy": accuracy, "phase": "logreg"})
            if accuracy > best_accuracy:
                best, best_accuracy = probe, accuracy
    fit_seconds = time.perf_counter() - start
    classifier = best[-1]
    trainable = classifier.coef_.size + classifier.intercept_.size
    scores, confusion = evaluate(lambda splits: [best.predict(x.load()) for x in splits],
                                 features)
    facts = {"fit_seconds": fit_seconds, "logreg_c": classifier.C,
             "params_total": base_params + trainable, "params_trainable": trainable,
             "params_non_trainable": base_params}
    return RunResult(metrics=facts | scores | sizes(features), history=history,
                     confusion=confusion)
