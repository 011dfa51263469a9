"""Registries: the named backbones, strategies and data sources every stage looks up.

Each registry is filled by the module that defines its entries (a backbone entry, a strategy
class, a data source module), imported on first look-up. Nothing outside an entry compares its
name: stages ask the entry for what it can do.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from tlbench.errors import TlbenchError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, filled by importing `modules` on first use."""

    def __init__(self, kind: str, key: str, modules: tuple[str, ...]) -> None:
        self.kind, self.key, self.modules = kind, key, modules
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str, entry: T) -> T:
        """Add an entry under `name` (a second entry of the same name is a programming error)."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def entry(self, name: str) -> Callable[[T], T]:
        """Decorator form of register."""
        return lambda obj: self.register(name, obj)

    def _load(self) -> dict[str, T]:
        if not self._loaded:
            self._loaded = True
            for module in self.modules:
                importlib.import_module(module)
        return self._entries

    def __getitem__(self, name: str) -> T:
        entries = self._load()
        if name not in entries:
            close = difflib.get_close_matches(str(name), entries, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise TlbenchError(f"{self.key}={name!r} is not a known {self.kind}; {hint}choose "
                               f"one of {', '.join(sorted(entries))}.")
        return entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._load()))

    def in_order(self) -> list[str]:
        """Names in the order they were registered (the order tables list them in)."""
        return list(self._load())

    def items(self) -> list[tuple[str, T]]:
        """(name, entry) pairs in name order."""
        return sorted(self._load().items())


BACKBONES: Registry = Registry("backbone", "backbone", ("tlbench.backbone",))
FILE_BACKBONES: Registry = Registry("backbone read from a file", "backbone",
                                    ("tlbench.backbone",))
"""backbone=keras_file and kerashub: their BackboneConfig subclasses, whose entry() reads the
network from the file their settings name."""
STRATEGIES: Registry = Registry("strategy", "strategy", ("tlbench.strategy",))
HEADS: Registry = Registry("head", "head", ("tlbench.strategy",))
SOURCES: Registry = Registry("data source", "data", ("tlbench.data",))
SCORES: Registry = Registry("score", "score", ("tlbench.scores",))
REPORT_SECTIONS: Registry = Registry("report section", "report section",
                                     ("tlbench.report.render", "tlbench.report.render_scores"))
PRETRAIN_SOURCES: Registry = Registry("pretraining source", "backbone.weights=source",
                                      ("tlbench.pretrain",))
