"""Rich rendering shared by the commands. Values go in as Text, never markup: paths hold brackets."""

from __future__ import annotations

import sys

from pydantic import BaseModel
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from orchestrator.jobs.health import duration as health_duration


def console() -> Console:
    # Piped output is never wrapped or cropped: a long value (an AMI parameter, a URL) stays whole.
    width = None if sys.stdout.isatty() else 10_000
    return Console(highlight=False, width=width)


def spec_tree(spec: BaseModel, title: str) -> Tree:
    """The resolved spec as a tree; values the file set are bold, defaults are dim."""
    tree = Tree(Text(title, style="bold green"))
    _add_fields(tree, spec)
    return tree


def _add_fields(branch: Tree, model: BaseModel) -> None:
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            _add_fields(branch.add(Text(name, style="bold")), value)
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            section = branch.add(Text(name, style="bold"))
            for i, item in enumerate(value):
                _add_fields(section.add(Text(f"[{i}]")), item)
        else:
            explicit = name in model.model_fields_set
            label = Text(f"{name}: ")
            label.append(_format(value), style="bold" if explicit else "dim")
            if not explicit:
                label.append("  (default)", style="dim italic")
            branch.add(label)


def _format(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def table(headers: list[str], rows: list[list], title: str | None = None):
    """A plain table (no box-drawing), right-aligned numbers; cells are text, never markup."""
    from rich import box
    from rich.table import Table

    grid = Table(*headers, box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False)
    for row in rows:
        grid.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    return grid


def money(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value >= 0.01 or value == 0 else f"${value:.2g}"


def duration(seconds: float | None) -> str:
    return "-" if seconds is None else health_duration(seconds)
