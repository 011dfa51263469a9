"""The frozen-computation cache computes each row once, misses on any key change, survives
concurrent and failing workers, and training on cached inputs matches training on images."""

from __future__ import annotations

import dataclasses
import multiprocessing
import time

import keras
import numpy as np
import pytest

from tlbench.backbone import BACKBONES, build_base
from tlbench.config import parse_config
from tlbench.data import ArrayImages, decoded_images, load_source, split_indices
from tlbench.frozen import cache
from tlbench.frozen.cache import POOLED, cached_rows, frozen_dataset, frozen_datasets
from tlbench.training.train import configure_runtime, train_logreg

from .conftest import TINY, assert_trained_alike, compose_config

KEY = {"format": 1, "test": True}


def squares(log: list[int]):
    """A compute function that records which positions it was asked for."""

    def compute(positions: np.ndarray):
        log.extend(int(p) for p in positions)
        yield positions, np.stack([positions * 1.0, positions**2.0], axis=1).astype(np.float32)

    return compute


def test_rows_are_computed_once_and_read_back_exactly(tmp_path):
    asked: list[int] = []
    small, large = np.array([1, 4, 7]), np.array([0, 1, 4, 7, 9])
    rows, computed, _ = cached_rows(tmp_path / "e", KEY, small, 10, squares(asked))
    assert computed == 3 and rows.read(small).tolist() == [[1, 1], [4, 16], [7, 49]]
    rows, computed, _ = cached_rows(tmp_path / "e", KEY, large, 10, squares(asked))
    assert computed == 2 and asked == [1, 4, 7, 0, 9]  # only the rows not cached yet
    assert rows.read(large)[:, 1].tolist() == [0, 1, 16, 49, 81]
    _, computed, _ = cached_rows(tmp_path / "e", KEY, large, 10, squares(asked))
    assert computed == 0 and len(asked) == 5
    (tmp_path / "e" / "rows.npy").unlink()  # a user cleaning up by hand: recomputed, not a crash
    _, computed, _ = cached_rows(tmp_path / "e", KEY, large, 10, squares(asked))
    assert computed == 5


def test_a_miss_fills_the_whole_source_when_asked(tmp_path):
    asked: list[int] = []
    fill = np.arange(10)
    _, computed, _ = cached_rows(tmp_path / "e", KEY, np.array([2, 3]), 10, squares(asked), fill)
    assert computed == 10 and sorted(asked) == list(range(10))
    rows, computed, _ = cached_rows(tmp_path / "e", KEY, np.array([8, 9]), 10, squares(asked),
                                    fill)
    assert computed == 0 and rows.read([8, 9])[:, 0].tolist() == [8, 9]


def test_a_failed_computation_marks_nothing_done(tmp_path):
    def fail(positions):
        raise RuntimeError("killed mid-way")

    with pytest.raises(RuntimeError):
        cached_rows(tmp_path / "e", KEY, np.arange(4), 4, fail)
    asked: list[int] = []
    _, computed, _ = cached_rows(tmp_path / "e", KEY, np.arange(4), 4, squares(asked))
    assert computed == 4 and asked == [0, 1, 2, 3]


def slow_worker(folder: str, log_path: str) -> int:
    """One worker asking for the same rows as another; logs each row it computes."""
    def compute(positions: np.ndarray):
        time.sleep(1.0)
        with open(log_path, "a") as log:
            log.write(f"{len(positions)}\n")
        yield positions, np.ones((len(positions), 3), dtype=np.float32)

    from pathlib import Path

    return cached_rows(Path(folder), KEY, np.arange(50), 50, compute)[1]


def test_concurrent_workers_compute_each_row_once(tmp_path):
    log = tmp_path / "computed.log"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        counts = pool.starmap(slow_worker, [(str(tmp_path / "e"), str(log))] * 2)
    assert sorted(counts) == [0, 50]
    assert log.read_text() == "50\n"


@pytest.fixture(scope="module")
def digits():
    """The default target's source and a 5-per-class split."""
    config = parse_config(compose_config([*TINY, "backbone=vgg16"]))
    source = load_source(config.data)
    return config, source, split_indices(source, config.data, seed=0)


def pixels(source, size: int, root):
    """The `images` argument of frozen_dataset(s): the source decoded into a test cache."""
    return lambda positions: decoded_images(source, "test", size, positions, root, 0)


def vgg16(seed: int, size: int = 32):
    """A random-init VGG16, seeded."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    return build_base(BACKBONES["vgg16"], size, None, None)


def test_cache_misses_when_any_key_input_changes(digits, tmp_path):
    config, source, splits = digits
    spec = BACKBONES["vgg16"]

    def computed(base, size=32, tap=POOLED, data=source) -> int:
        return frozen_dataset(base, spec, data, splits, size, tap, tmp_path, 32,
                              pixels(data, size, tmp_path / "images")).computed

    n = len(np.unique(np.concatenate([splits.train, splits.val, splits.test])))
    base = vgg16(seed=0)
    assert computed(base) == n
    assert computed(base) == 0
    assert computed(vgg16(seed=0)) == 0  # same weights rebuilt: same digest
    assert computed(vgg16(seed=1)) == n  # other weights
    assert computed(base, tap="block4_pool") == n  # other tap
    assert computed(vgg16(seed=0, size=40), size=40) == n  # other input size
    other = dataclasses.replace(source, images=ArrayImages(source.images.pixels[::-1].copy()))
    assert computed(base, data=other) == n  # other images
    assert len(list(tmp_path.glob("vgg16-*px-*-*/done.npy"))) == 5


def test_small_sources_are_forwarded_once_for_every_size_and_seed(digits, tmp_path):
    config, source, splits = digits
    spec, base = BACKBONES["vgg16"], vgg16(seed=0)
    images = pixels(source, 32, tmp_path / "images")
    first = frozen_dataset(base, spec, source, splits, 32, POOLED, tmp_path, 32, images, 5000)
    assert first.computed == len(source.labels)
    other = split_indices(source, dataclasses.replace(config.data, train_size="all"), seed=1)
    again = frozen_dataset(base, spec, source, other, 32, POOLED, tmp_path, 32, images, 5000)
    assert again.computed == 0 and len(again.data.y_train) > len(first.data.y_train)


def test_cached_features_equal_a_fresh_forward(digits, tmp_path):
    config, source, splits = digits
    spec, base = BACKBONES["vgg16"], vgg16(seed=0)
    images = pixels(source, 32, tmp_path / "images")
    fresh = frozen_dataset(base, spec, source, splits, 32, POOLED, None, 32, images)
    frozen_dataset(base, spec, source, splits, 32, POOLED, tmp_path, 32, images)
    cached = frozen_dataset(base, spec, source, splits, 32, POOLED, tmp_path, 32, images)
    assert cached.computed == 0 and fresh.computed == len(np.unique(
        np.concatenate([splits.train, splits.val, splits.test])))
    np.testing.assert_array_equal(cached.data.x_test.load(), fresh.data.x_test.load())
    np.testing.assert_array_equal(cached.data.y_train, source.labels[splits.train])


def test_taps_missing_the_same_rows_share_one_forward_pass(digits, tmp_path, monkeypatch):
    """Pooled features and a cut's activations missing from the cache are computed by one pass
    over the images (the cut's rows are those a pass of their own computes); a tap whose entry
    is filled already is not computed again, and rows beyond FILL_BYTES are not held for a
    later tap."""
    config, source, splits = digits
    spec, base = BACKBONES["vgg16"], vgg16(seed=0)
    passes: list[tuple[int, int]] = []  # (outputs, images) of each predict call
    predict = keras.Model.predict

    def counted(model, images, **kwargs):
        passes.append((len(model.outputs), len(images)))
        return predict(model, images, **kwargs)

    def images_forwarded(outputs: int) -> int:
        return sum(n for width, n in passes if width == outputs)

    images = pixels(source, 32, tmp_path / "images")
    separate = [frozen_dataset(base, spec, source, splits, 32, tap, None, 32, images)
                for tap in (POOLED, "block4_pool")]
    monkeypatch.setattr(keras.Model, "predict", counted)
    pooled, cut = frozen_datasets(base, spec, source, splits, 32, [POOLED, "block4_pool"],
                                  tmp_path, 32, images)
    assert pooled.computed == cut.computed == images_forwarded(2) > 0
    assert images_forwarded(1) == 0
    for joint, alone in zip((pooled, cut), separate, strict=True):
        for split in ("x_train", "x_test"):
            np.testing.assert_allclose(getattr(joint.data, split).load(),
                                       getattr(alone.data, split).load(), rtol=1e-5, atol=1e-6)
    passes.clear()
    other = vgg16(seed=1)
    frozen_dataset(other, spec, source, splits, 32, "block4_pool", tmp_path, 32, images)
    frozen_datasets(other, spec, source, splits, 32, [POOLED, "block4_pool"], tmp_path, 32,
                    images)
    assert images_forwarded(2) == 0  # the cut alone, then the pooled features alone:
    assert images_forwarded(1) == 2 * pooled.computed
    passes.clear()
    one_row = cut.data.x_train.read([0])[0].nbytes
    monkeypatch.setattr(cache, "AHEAD_BYTES", one_row)  # one cut row
    frozen_datasets(vgg16(seed=2), spec, source, splits, 32, [POOLED, "block4_pool"],
                    tmp_path, 32, images)
    assert images_forwarded(2) == 0  # too many cut rows to hold for later: two passes
    assert images_forwarded(1) == 2 * pooled.computed


def trained(config, via_cache: bool, cache_dir):
    """Train one config in-process on images (cache off) or on cached frozen inputs, through
    the strategy object as the CLI does; result and base."""
    from tlbench import strategy
    from tlbench.prepare import prepare

    cache_config = dataclasses.replace(config.cache, enabled=via_cache, dir=str(cache_dir))
    config = dataclasses.replace(config, cache=cache_config)
    adapt = strategy.for_run(config)
    prepared = prepare(config, config.backbone.weights, None)
    return adapt.train(prepared), prepared.base


@pytest.mark.parametrize("strategy", ["feature_extraction", "partial_finetune"])
def test_training_on_cached_inputs_matches_training_on_images(tiny_config, tmp_path, strategy):
    """Same network, same initialisation, same batches: the same trained weights and predictions
    (up to float round-off), whichever path fed it. The base is the default source checkpoint
    (the session's cache, shared with tests/test_pretrain.py and tests/test_rank.py), so the head
    learns and the comparison is not one of two chance-level runs."""
    config = tiny_config("backbone.weights=source:digits04", f"strategy={strategy}",
                         "data.train_size=20", "trainer.epochs=3", "trainer.lr=0.01")
    from tlbench import registry
    from tlbench.strategy import for_run

    route = for_run(config).route(config, registry.BACKBONES[config.backbone.name])
    assert route.inputs == ("features" if strategy == "feature_extraction" else "cut")
    on_images, base_images = trained(config, False, tmp_path)
    on_cache, base_cache = trained(config, True, tmp_path)
    assert on_images.metrics["test_accuracy"] > 0.35  # chance is 0.2
    for key in ("test_accuracy", "val_accuracy", "params_total", "params_trainable"):
        assert on_cache.metrics[key] == pytest.approx(on_images.metrics[key], abs=0.02), key
    assert np.abs(on_cache.confusion - on_images.confusion).sum() <= 4  # at most 2 test images
    for cached, direct in zip(base_cache.weights, base_images.weights, strict=True):
        np.testing.assert_allclose(cached.numpy(), direct.numpy(), atol=1e-4, err_msg=cached.path)
    assert on_cache.metrics["frozen_rows_computed"] > 0 and "feature_seconds" in on_cache.metrics


def test_logreg_probe_standardises_random_features(tiny_config, tmp_path):
    """Unscaled random-init features leave logistic regression near chance; the probe's
    StandardScaler is what makes them usable (measured 0.20 vs 0.74 on digits)."""
    from sklearn.linear_model import LogisticRegression

    config = tiny_config("data=digits", "backbone=mobilenetv2", "head=logreg",
                         "data.train_size=30")
    keras.backend.clear_session()
    configure_runtime(config.trainer, 0, None)
    source = load_source(config.data)
    splits = split_indices(source, config.data, 0)
    base = build_base(BACKBONES["mobilenetv2"], 32, None, 0.9)
    features = frozen_dataset(base, BACKBONES["mobilenetv2"], source, splits, 32, POOLED,
                              tmp_path, 32, pixels(source, 32, tmp_path / "images")).data
    probe = train_logreg(features, config.strategy.head, base.count_params(), seed=0)
    unscaled = LogisticRegression(C=1.0, max_iter=1000).fit(features.x_train.load(),
                                                            features.y_train)
    unscaled_accuracy = unscaled.score(features.x_test.load(), features.y_test)
    print(f"probe {probe.metrics['test_accuracy']:.3f}, unscaled {unscaled_accuracy:.3f}")
    assert probe.metrics["test_accuracy"] > unscaled_accuracy + 0.25
    assert probe.metrics["logreg_c"] in config.strategy.head.c_grid
    assert probe.metrics["params_trainable"] == 1280 * 10 + 10


def test_feature_cost_does_not_depend_on_which_run_filled_the_cache(tiny_config, tmp_path):
    """The run that fills the cache pays the forward pass in time (feature_seconds), but every
    run using the same number of rows reports the same cost (feature_cost_seconds)."""
    from tlbench import strategy
    from tlbench.prepare import prepare

    metrics = []
    for lr in (0.001, 0.01):  # same base and images, another head
        config = tiny_config("backbone=vgg16", f"trainer.lr={lr}", f"cache.dir={tmp_path}")
        metrics.append(strategy.for_run(config).train(prepare(config, None, None)).metrics)
    first, second = metrics
    assert first["frozen_rows_computed"] > 0 and second["frozen_rows_computed"] == 0
    assert second["feature_cost_seconds"] == pytest.approx(first["feature_cost_seconds"])
    assert first["feature_cost_seconds"] > 0
    assert first["feature_seconds"] > second["feature_seconds"]


def test_a_cached_run_trains_as_a_cold_run_without_building_the_base(tiny_config, tmp_path,
                                                                     monkeypatch):
    """A sequential sweep's fast path (cache hit, the base's facts read from its record so the
    base is never built, the head compiled by an earlier run reused) trains exactly what a cold
    run (base built, head compiled afresh) trains: same epochs' losses, final head weights,
    predictions, parameter counts, multiply-adds and summary."""
    from tlbench import strategy
    from tlbench.frozen import base_facts
    from tlbench.prepare import prepare
    from tlbench.training import train

    monkeypatch.setattr(train, "COMPILED", {})  # the cold run compiles its own head

    def run(*overrides: str):
        config = tiny_config("backbone=mobilenetv2", "data.train_size=10", "trainer.epochs=2",
                             f"cache.dir={tmp_path}", *overrides)
        prepared = prepare(config, None, None)
        result = strategy.for_run(config).train(prepared)
        ((head,),) = train.COMPILED.values()
        return prepared, result, [v.numpy() for v in head.variables], head.train_function

    cold_prepared, cold, cold_head, traced = run()
    run("seed=1", "trainer.lr=0.01")  # another base and head in between, on the same compiled head
    warm_prepared, warm, warm_head, traced_again = run()
    assert cold_prepared._base is not None and warm_prepared._base is None  # never built
    assert traced_again is traced  # trained on the functions the cold run traced
    assert cold.metrics["frozen_rows_computed"] > 0 and warm.metrics["frozen_rows_computed"] == 0
    for cold_value, warm_value in zip(cold_head, warm_head, strict=True):
        np.testing.assert_array_equal(warm_value, cold_value)
    assert_trained_alike(warm, cold)
    assert warm.summary == cold.summary and "mobilenetv2" in warm.summary
    recorded = dataclasses.replace(base_facts.measured(cold_prepared.base, 32), summary="")
    built_now = base_facts.measured(warm_prepared.base, 32)  # the record is sound:
    assert dataclasses.replace(built_now, summary="") == recorded  # (summaries: other names)
    head = 2 * 1280 + 1280 * 5 + 5  # standardisation statistics, softmax layer
    assert warm.metrics["params_total"] == recorded.params + head
    assert warm.metrics["params_trainable"] == 1280 * 5 + 5


def test_float16_cut_activations_halve_the_cache_and_train_alike(tiny_config, tmp_path):
    """cache.dtype=float16 keeps a partial fine-tune's cut activations in half the bytes; the
    run trains to nearly the same accuracy and logs the dtype as a param of its identity."""
    from tlbench import strategy
    from tlbench.prepare import prepare
    from tlbench.tracking import identity

    results, sizes = {}, {}
    for dtype in ("float32", "float16"):
        config = tiny_config("backbone.weights=source:digits04", "strategy=partial_finetune",
                             "data.train_size=20", "trainer.epochs=3", "trainer.lr=0.01",
                             f"cache.dir={tmp_path / dtype}", f"cache.dtype={dtype}")
        prepared = prepare(config, config.backbone.weights, None)
        results[dtype] = strategy.for_run(config).train(prepared).metrics
        (cut,) = [p for p in (tmp_path / dtype).glob("*/rows.npy") if "-pooled-" not in str(p)]
        sizes[dtype] = cut.stat().st_size
        assert ("cut_dtype" in identity.identity(config)) == (dtype == "float16")
    assert sizes["float16"] < 0.51 * sizes["float32"]
    assert results["float16"]["test_accuracy"] > 0.35  # chance is 0.2
    assert results["float16"]["test_accuracy"] == pytest.approx(
        results["float32"]["test_accuracy"], abs=0.05)
