"""Fixed stratified val/test splits (by data.split_seed) and nested, seeded train subsets."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from tlbench.config import DataConfig
from tlbench.data.source import LabelledImages, short_reason
from tlbench.errors import TlbenchError


@dataclass(frozen=True)
class Splits:
    """Positions in the source of this run's train subset and the fixed val and test splits."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def fixed_splits(labels: np.ndarray, cfg: DataConfig, given_test: np.ndarray | None = None,
                 class_names: tuple[str, ...] | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the train pool, val and test splits, stratified and fixed by split_seed.

    With the source's own test split (`given_test`), that is the test split and val is carved
    from the rest (val_fraction of it); otherwise test_fraction of everything is carved off first.
    """
    _check_class_counts(labels, class_names, "the source")
    everything = np.arange(len(labels))
    if given_test is None:
        rest, test = _stratified(everything, labels, cfg.test_fraction, cfg, class_names)
        val_share = cfg.val_fraction / (1 - cfg.test_fraction)
    else:
        test = np.asarray(given_test)
        rest, val_share = np.setdiff1d(everything, test), cfg.val_fraction
        _check_class_counts(labels[rest], class_names, "the train split")
    pool, val = _stratified(rest, labels, val_share, cfg, class_names)
    return np.sort(pool), np.sort(val), np.sort(test)


MIN_PER_CLASS = 3  # one image each for train, val and test


def _check_class_counts(labels: np.ndarray, class_names, where: str) -> None:
    """Refuse a class too small to appear in train, val and test, naming it."""
    counts = np.bincount(labels, minlength=len(class_names or ()))
    smallest = int(np.argmin(counts))
    if counts[smallest] < MIN_PER_CLASS:
        name = class_names[smallest] if class_names else smallest
        raise TlbenchError(f"data: class {name} has {counts[smallest]} images in {where}; every "
                           f"class needs at least {MIN_PER_CLASS} (train, val and test); add "
                           "images or drop the class.")


def _stratified(positions: np.ndarray, labels: np.ndarray, share: float, cfg: DataConfig,
                class_names) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of positions into (kept, carved) with `share` carved off.

    At least one image per class is carved (small folders); otherwise ceil(share x n), as
    scikit-learn does for a fractional test_size, so larger sources split exactly as before.
    """
    n_classes = len(np.unique(labels[positions]))
    carve = max(math.ceil(share * len(positions)), n_classes)
    try:
        return train_test_split(positions, test_size=carve, stratify=labels[positions],
                                random_state=cfg.split_seed)
    except ValueError as exc:  # e.g. fewer carved images than classes
        raise TlbenchError(f"data: cannot cut a stratified split of {share:.0%} from "
                           f"{len(positions)} images of {len(np.unique(labels[positions]))} "
                           f"classes ({short_reason(exc)}); add images or raise data.val_fraction/"
                           "data.test_fraction.") from None


def _class_orders(labels: np.ndarray, seed: int) -> dict[int, np.ndarray]:
    """For each class, its positions in a seeded order that does not depend on the subset size."""
    return {
        int(c): np.random.default_rng([seed, int(c)]).permutation(np.flatnonzero(labels == c))
        for c in np.unique(labels)
    }


def nested_subset(labels: np.ndarray, train_size: str, seed: int,
                  class_names: tuple[str, ...] | None = None) -> np.ndarray:
    """Positions of a stratified subset of `labels`; for one seed, smaller sizes nest in larger."""
    if train_size == "all":
        return np.arange(len(labels))
    orders = _class_orders(labels, seed)
    if train_size.startswith("total:"):
        return _total_subset(orders, int(train_size.removeprefix("total:")), len(labels),
                             class_names)
    per_class = int(train_size)
    smallest = min(orders, key=lambda c: len(orders[c]))
    if per_class > len(orders[smallest]):
        raise TlbenchError(
            f"data.train_size={per_class} per class is more than the pool has: class "
            f"{class_names[smallest] if class_names else smallest} has {len(orders[smallest])} "
            "images; use at most that, total:N with "
            f"N <= {len(labels)}, or all."
        )
    return np.sort(np.concatenate([order[:per_class] for order in orders.values()]))


def _total_subset(orders: dict[int, np.ndarray], total: int, available: int,
                  class_names: tuple[str, ...] | None) -> np.ndarray:
    """The first `total` images of a class-proportional interleaving of the seeded class orders;
    refused where that leaves a class without an image."""
    if total > available:
        raise TlbenchError(f"data.train_size=total:{total} is more than the training pool's "
                           f"{available} images; use total:{available} or all.")
    keys, positions, owners = [], [], []
    for c, order in orders.items():
        keys.append((np.arange(len(order)) + 0.5) / len(order) + c * 1e-9)
        positions.append(order)
        owners.append(np.full(len(order), c))
    ranking = np.argsort(np.concatenate(keys), kind="stable")
    classes, firsts = np.unique(np.concatenate(owners)[ranking], return_index=True)
    if total <= firsts.max():
        left_out = int(classes[firsts.argmax()])
        raise TlbenchError(
            f"data.train_size=total:{total} leaves class "
            f"{class_names[left_out] if class_names else left_out} without a training image (a "
            f"stratified total keeps the classes' proportions); use total:{firsts.max() + 1} or "
            "more, or a count per class.")
    return np.sort(np.concatenate(positions)[ranking[:total]])


def split_indices(source: LabelledImages, cfg: DataConfig, seed: int) -> Splits:
    """This run's train subset (nested by seed) and the fixed val/test splits (the source's own
    val and test splits when it has them), as positions in the source. With data.protocol=final
    the train pool also holds the val split (the final run trains on train+val; its
    val_accuracy is then measured on images it trained on)."""
    labels, names = source.labels, source.class_names
    if source.given_val is None:
        pool, val, test = fixed_splits(labels, cfg, source.given_test, names)
    else:
        pool, val, test = given_splits(source)
    if cfg.protocol == "final":
        pool = np.union1d(pool, val)
    return Splits(pool[nested_subset(labels[pool], cfg.train_size, seed, names)], val, test)


def given_splits(source: LabelledImages) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The train pool, val and test splits of a source that brings all three (TFDS train_split,
    val_split and test_split), taken as they are: as in VTAB-1k, a class may be missing from
    one of them."""
    val, test = np.asarray(source.given_val), np.asarray(source.given_test)
    pool = np.setdiff1d(np.arange(len(source.labels)), np.union1d(val, test))
    return pool, np.sort(val), np.sort(test)
