"""Splits are fixed, subsets stratified and nested, sizes beyond the data refused."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.data import fixed_splits, load_dataset, nested_subset, resize
from tlbench.data.digits import load_digits_images
from tlbench.data.shapes import load_shapes_images
from tlbench.errors import TlbenchError

from .conftest import data_config

LABELS = np.repeat(np.arange(4), [30, 20, 25, 40])


def test_digits_are_rgb_in_0_255():
    source = load_digits_images(data_config("digits"))
    assert source.images.pixels.shape == (1797, 8, 8, 3)
    assert source.images.pixels.min() == 0 and source.images.pixels.max() == 255
    assert source.class_names == tuple("0123456789")


@pytest.mark.parametrize("size", ["3", "total:40"])
def test_subsets_nest_within_larger_ones(size):
    small = set(nested_subset(LABELS, size, seed=1))
    larger = "10" if size == "3" else "total:90"
    assert small < set(nested_subset(LABELS, larger, seed=1))


def test_per_class_subset_is_stratified_and_seeded():
    chosen = nested_subset(LABELS, "5", seed=0)
    assert np.bincount(LABELS[chosen]).tolist() == [5, 5, 5, 5]
    assert not np.array_equal(chosen, nested_subset(LABELS, "5", seed=1))
    assert np.array_equal(chosen, nested_subset(LABELS, "5", seed=0))


def test_total_subset_keeps_class_proportions():
    counts = np.bincount(LABELS[nested_subset(LABELS, "total:23", seed=0)], minlength=4)
    assert counts.sum() == 23
    expected = 23 * np.bincount(LABELS) / len(LABELS)
    assert np.all(np.abs(counts - expected) <= 1)


@pytest.mark.parametrize(("labels", "names", "size", "left_out", "least"), [
    (np.repeat(np.arange(5), 20), None, "total:4", "class 4", "total:5"),
    (np.repeat([0, 1], [2, 200]), ("rare", "common"), "total:50", "class rare", "total:51"),
])
def test_a_total_that_leaves_a_class_out_is_refused_with_the_least_that_does_not(
        labels, names, size, left_out, least):
    """Fewer images than classes, or a class so small its share comes after the total: the
    error names the class and the smallest total that keeps every class, which does."""
    with pytest.raises(TlbenchError) as error:
        nested_subset(labels, size, seed=0, class_names=names)
    assert f"{size} leaves {left_out} without a training image" in str(error.value)
    assert f"use {least} or more" in str(error.value)
    assert set(labels[nested_subset(labels, least, seed=0, class_names=names)]) == set(labels)


def test_all_is_the_whole_pool():
    assert np.array_equal(nested_subset(LABELS, "all", seed=3), np.arange(len(LABELS)))


@pytest.mark.parametrize(("size", "message"), [
    ("21", "class 1 has 20 images"),
    ("total:116", "total:115 or all"),
])
def test_size_larger_than_data_is_refused(size, message):
    with pytest.raises(TlbenchError, match=message):
        nested_subset(LABELS, size, seed=0)


def test_splits_are_disjoint_stratified_and_cover_everything():
    cfg = data_config("digits", val_fraction=0.1, test_fraction=0.2, split_seed=0)
    labels = load_digits_images(cfg).labels
    pool, val, test = fixed_splits(labels, cfg)
    assert len(set(pool) | set(val) | set(test)) == len(labels) == len(pool) + len(val) + len(test)
    assert len(test) == 360 and len(val) == 180
    assert np.abs(np.bincount(labels[test]) - 36).max() <= 1


def test_test_set_does_not_depend_on_size_or_seed():
    cfg = data_config("digits", train_size="5")
    first = load_dataset(cfg, input_size=32, seed=0)
    other = load_dataset(data_config("digits", train_size="all"), input_size=32, seed=7)
    assert np.array_equal(first.x_test.load(), other.x_test.load())
    assert np.array_equal(first.y_test, other.y_test)
    assert np.array_equal(first.x_val.load(), other.x_val.load())
    assert first.x_train.shape == (50, 32, 32, 3) and len(other.y_train) == 1257


def test_resized_images_are_uint8_rounded_from_the_float_resize():
    dataset = load_dataset(data_config("digits", train_size="2"), input_size=40, seed=0)
    pixels = dataset.x_train.load()
    assert pixels.shape[1:] == (40, 40, 3) and pixels.dtype == np.uint8
    assert pixels.max() > 200
    source = load_digits_images(data_config("digits"))
    exact = resize(source.images[dataset.x_train.positions], 40)
    np.testing.assert_array_equal(pixels, np.rint(exact))


def test_digit_classes_are_kept_and_relabelled_in_order():
    everything = load_digits_images(data_config("digits"))
    target = load_digits_images(data_config("digits", classes=[5, 6, 7, 8, 9]))
    assert target.class_names == ("5", "6", "7", "8", "9")
    assert np.bincount(target.labels).tolist() == np.bincount(everything.labels)[5:].tolist()
    np.testing.assert_array_equal(target.images.pixels[target.labels == 0],
                                  everything.images.pixels[everything.labels == 5])


@pytest.mark.parametrize("classes", [[5], [1, 1], [3, 10]])
def test_bad_digit_classes_are_refused(classes):
    with pytest.raises(TlbenchError, match="data.classes"):
        data_config("digits", classes=classes)


def test_shapes_are_deterministic_by_seed_and_rgb_in_0_255():
    cfg = data_config("shapes", n_classes=4, images_per_class=12, image_size=16, seed=3)
    first, again = load_shapes_images(cfg), load_shapes_images(cfg)
    other = load_shapes_images(data_config("shapes", n_classes=4, images_per_class=12,
                                            image_size=16, seed=4))
    assert first.images.pixels.shape == (48, 16, 16, 3)
    assert np.bincount(first.labels).tolist() == [12] * 4
    assert first.class_names == ("disc", "square", "triangle", "ring")
    assert first.images.pixels.min() >= 0 and first.images.pixels.max() <= 255
    np.testing.assert_array_equal(first.images.pixels, again.images.pixels)
    assert not np.array_equal(first.images.pixels, other.images.pixels)


def test_shapes_feed_the_same_splits_and_subsets():
    dataset = load_dataset(data_config("shapes", train_size="3"), input_size=32, seed=0)
    assert dataset.n_classes == 10 and dataset.x_train.shape == (30, 32, 32, 3)
    assert len(dataset.y_test) == 200 and len(dataset.y_val) == 100
