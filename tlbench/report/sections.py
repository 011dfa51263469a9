"""The report's sections: each one registered function of the analysis, rendered by `order`.

A section is `fn(analysis, source, plots) -> markdown | None` (None: nothing to show this time),
registered with `@section(name, order)`; `needs_results` sections are left out when no run logged
the metric. The built-in ones sit at orders 10 (header) to 90 (failures), ten apart, so a new
section in its own module places itself between them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tlbench import registry

if TYPE_CHECKING:
    from tlbench.report.analysis import Analysis, Source

Render = Callable[["Analysis", "Source", dict[str, str]], "str | None"]

BODY_ORDERS = range(11, 90)
"""The orders between the header (10) and the failures (90): what a report of several datasets
renders once per dataset."""


@dataclass(frozen=True)
class Section:
    """A registered report section: how it renders, where it goes, whether it needs results."""

    render: Render
    order: int
    needs_results: bool = True


def section(name: str, order: int, needs_results: bool = True) -> Callable[[Render], Render]:
    """Register the decorated function as the report section `name`, placed at `order`."""

    def add(render: Render) -> Render:
        registry.REPORT_SECTIONS.register(name, Section(render, order, needs_results))
        return render

    return add


def rendered_sections(analysis: Analysis, source: Source, plots: dict[str, str],
                      orders: range | None = None) -> list[str]:
    """Every registered section's markdown (or those whose order is in `orders`), by order;
    those with nothing to show left out."""
    ordered = sorted(
        (entry for _, entry in registry.REPORT_SECTIONS.items()
         if orders is None or entry.order in orders), key=lambda entry: entry.order
    )
    results = not analysis.summary.empty
    texts = [
        entry.render(analysis, source, plots)
        for entry in ordered
        if results or not entry.needs_results
    ]
    return [text for text in texts if text]
