"""Rich rendering shared by the commands. Values go in as Text, never markup: paths hold brackets."""

from __future__ import annotations

import sys

from pydantic import BaseModel
from rich.console import Console
from rich.text import Text
from rich.tree import Tree

from orchestrator.jobs.health import duration as health_duration
from orchestrator.jobs.state import age_s
from trainer.job.units import amounts, money, plural, price, rate

__all__ = ["age", "amounts", "console", "duration", "money", "plural", "price", "rate", "spec_tree", "table"]


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


def table(
    headers: list[str],
    rows: list[list],
    title: str | None = None,
    ids: tuple[str, ...] = (),
    min_widths: dict[str, int] | None = None,
):
    """A plain table (no box-drawing); cells are text, never markup. Columns named in `ids` are never
    wrapped, cut or shrunk (an id is copied into the next command: half of one is useless); the others
    give way. `min_widths` keeps a column from narrowing as its values change (a live table)."""
    from rich import box
    from rich.table import Table

    grid = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False, show_edge=False)
    for header in headers:
        is_id = header in ids
        grid.add_column(
            header,
            no_wrap=is_id,
            overflow="ignore" if is_id else "fold",
            min_width=max((min_widths or {}).get(header, 0), 0) or None,
        )
    for row in rows:
        grid.add_row(*(Text("-" if cell is None else str(cell)) for cell in row))
    return grid


def duration(seconds: float | None) -> str:
    return "-" if seconds is None else health_duration(seconds)


def age(iso: str | None, now=None) -> str:
    """How long ago an ISO time was, as a person says it: `3m ago` (`--json` keeps the ISO time)."""
    if not iso:
        return "-"
    return f"{health_duration(max(0.0, age_s(iso, now)))} ago"
