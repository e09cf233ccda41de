"""Allocators, registered by name (as `register_job` registers job kinds): how a search picks
each layer's level under the budget.

An allocator is one module in core/search/allocators/ that decorates its function:

    @register_allocator("sensitivity", "knapsack of Hessian-weighted errors", rank=2)
    def sensitivity(setup, database) -> Allocation: ...

`setup` is the search's core/search/setup.Setup (spec, model, layers, fused units, target in
code bits, events); `database()` builds or opens the variant database on first call (an
allocator checks its target before asking, so a bad target fails before the slow build).
Every allocator returns one shape, an `Allocation`: the unit genome over its search space,
the database it measured with (or None), and its part of the report. The search job's
validation, the CLI's --method choices, the window's method menu and the driver read this
registry: adding an allocator is adding that one file.

This module and the allocator modules import no torch at import time (their functions do).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..errors import BadInput
from ..plugins import import_all, used_by as fields_used_by

if TYPE_CHECKING:
    from .database import VariantDatabase
    from .genome import Genome, SearchSpace


@dataclass
class Allocation:
    """What every allocator returns."""

    space: "SearchSpace"                    # units × levels the genome indexes
    genome: "Genome"                        # one level index per unit
    db: "VariantDatabase | None" = None     # the variants the plan's perplexity is measured with
    report: dict[str, Any] = field(default_factory=dict)   # its part of the search report


@dataclass(frozen=True)
class Allocator:
    """An allocator's own small spec, and its function."""

    name: str
    allocate: Callable[..., Allocation]     # (setup, database: () -> VariantDatabase) -> Allocation
    description: str
    rank: int = 99                          # place in menus (the default first)
    min_levels: int = 1                     # distinct levels it needs to choose between
    uses: tuple[str, ...] = ()              # search-job fields only some allocators read (the window greys them)
    database: bool = True                   # builds the variant database (False: uses one only when given)
    label: str = ""                         # how messages name it (default: its name)

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)


_ALLOCATORS: dict[str, Allocator] = {}


def register_allocator(name: str, description: str, *, rank: int = 99, min_levels: int = 1,
                       uses: tuple[str, ...] = (), database: bool = True, label: str = "") -> Callable:
    """Decorator for `allocate(setup, database) -> Allocation`."""

    def wrap(fn: Callable) -> Callable:
        _ALLOCATORS[name] = Allocator(name, fn, description, rank, min_levels, tuple(uses), database, label)
        return fn

    return wrap


def allocators() -> dict[str, Allocator]:
    """Every registered allocator, in menu order; imports each module of allocators/ once."""
    from . import allocators as package

    import_all(package)
    return dict(sorted(_ALLOCATORS.items(), key=lambda item: (item[1].rank, item[0])))


def allocator_names() -> list[str]:
    """The --method choices, the default first."""
    return list(allocators())


def allocator(name: str) -> Allocator:
    """The allocator called `name`; an unknown name is bad input naming the known ones."""
    known = allocators()
    if name not in known:
        raise BadInput(f"unknown search method {name!r}", f"use one of: {', '.join(known)}")
    return known[name]


def used_by() -> dict[str, tuple[str, ...]]:
    """{job field: the allocators that read it} for the fields only some allocators read."""
    return fields_used_by(allocators().values())


__all__ = ["Allocation", "Allocator", "register_allocator", "allocators", "allocator_names", "allocator", "used_by"]
