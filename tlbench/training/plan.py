"""What a strategy hands the trainer: a model and its training phases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Phase:
    """One compile-and-fit step: its epochs, its learning rate and the trainable flags it needs.

    `model` (default: the plan's) is what this phase fits, on the arrays named by `inputs`;
    `lr` is a float or a Keras learning-rate schedule.
    """

    name: str
    epochs: int
    lr: Any
    set_trainable: Callable[[], None]
    model: Any = None
    inputs: str = "images"


@dataclass
class Plan:
    """A model ready to train in phases, evaluated at the end on the arrays named by `inputs`.

    `full_model` is the whole network (base and head) whose parameters the run reports; without
    one, `model`'s plus `frozen_params` (a frozen base's, known without building it).
    `reuse_key` names the architecture and trainable parts of the plan's models (its own and
    its phases'): models compiled earlier in the process under the same key may train in their
    place (tlbench.training.train.fit), so it is set only where each phase fits a model of its own.
    """

    model: Any
    phases: list[Phase]
    inputs: str = "images"
    full_model: Any = None
    frozen_params: int = 0
    reuse_key: tuple | None = None


def keep() -> None:
    """A phase action for models whose trainable flags are already right."""
