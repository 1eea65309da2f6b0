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
from trainer.job.spec import applies_when


def console() -> Console:
    # Piped output is never wrapped or cropped: a long value (an AMI parameter, a URL) stays whole.
    width = None if sys.stdout.isatty() else 10_000
    return Console(highlight=False, width=width)


def spec_tree(spec: BaseModel, title: str, filled_in: dict[str, str] | None = None) -> Tree:
    """The resolved spec as a tree; values the file set are bold, defaults are dim, and values filled
    in from elsewhere (the deployed stack, the local cloud: `filled_in`, dotted path -> source) say
    where from. A field that does not apply where it is (gamma with a cosine schedule) is left out;
    set anyway, it is marked."""
    tree = Tree(Text(title, style="bold green"))
    _add_fields(tree, spec, filled_in or {}, "")
    return tree


def _add_fields(branch: Tree, model: BaseModel, filled_in: dict[str, str], prefix: str) -> None:
    for name in type(model).model_fields:
        value, path = getattr(model, name), f"{prefix}{name}"
        explicit = name in model.model_fields_set and path not in filled_in
        condition = applies_when(type(model), name)
        applies = condition is None or condition.holds(model)
        if not applies and not explicit:
            continue  # e.g. momentum for adamw: not part of the spec as it runs
        if isinstance(value, BaseModel):
            _add_fields(branch.add(Text(name, style="bold")), value, filled_in, f"{path}.")
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            heading = Text(name, style="bold")
            if path in filled_in:  # a whole list filled in (the stack's notify targets)
                heading.append(f"  (from {filled_in[path]})", style="dim italic")
            section = branch.add(heading)
            for i, item in enumerate(value):
                _add_fields(section.add(Text(f"[{i}]")), item, filled_in, f"{path}[{i}].")
        else:
            label = Text(f"{name}: ")
            label.append(_format(value), style="bold" if explicit else "dim")
            if path in filled_in:
                label.append(f"  (from {filled_in[path]})", style="dim italic")
            elif not explicit:
                label.append("  (default)", style="dim italic")
            if not applies:
                label.append(f"  (no effect: applies only {condition.describe()})", style="yellow")
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
