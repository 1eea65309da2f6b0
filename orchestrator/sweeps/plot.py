"""Terminal plots of a sweep (no plotting library: the orchestrator's dependencies stay as they are):
the objective against the trial number, and each parameter's effect (the objective against its value)."""

from __future__ import annotations

HEIGHT, WIDTH = 8, 48
MARKS = {"complete": "●", "pruned": "×", "running": "·", "failed": "!"}


def scatter(points: list[tuple[float, float, str]], x_label: str, y_label: str, log_x: bool = False) -> list[str]:
    """A character plot of (x, y, state) points: y up, x across, each point marked by its trial's state."""
    import math

    if not points:
        return []
    xs = [math.log10(x) if log_x and x > 0 else x for x, _, _ in points]
    ys = [y for _, y, _ in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    grid = [[" "] * WIDTH for _ in range(HEIGHT)]
    for x, (_, y, state) in zip(xs, points, strict=True):
        col = 0 if x1 == x0 else round((x - x0) / (x1 - x0) * (WIDTH - 1))
        row = 0 if y1 == y0 else round((y1 - y) / (y1 - y0) * (HEIGHT - 1))
        grid[row][col] = MARKS.get(state, "?")
    lines = [f"{y_label} vs {x_label}"]
    for i, row in enumerate(grid):
        label = f"{y1:8.4g}" if i == 0 else (f"{y0:8.4g}" if i == HEIGHT - 1 else " " * 8)
        lines.append(f"{label} |{''.join(row)}")
    left = points[xs.index(x0)][0]
    right = points[xs.index(x1)][0]
    lines.append(" " * 9 + "+" + "-" * WIDTH)
    lines.append(" " * 10 + f"{left:<.4g}".ljust(WIDTH - 8) + f"{right:.4g}".rjust(8))
    return lines


def sweep_plots(status: dict, log_params: set[str] = frozenset()) -> list[str]:
    """Objective vs trial, then one plot per numeric parameter (a choice: the best value per choice)."""
    metric = status["objective"]["metric"]
    scored = [
        (row, row["value"] if row["value"] is not None else row["best_metric"])
        for row in status["trials"]
        if row["value"] is not None or row["best_metric"] is not None
    ]
    if not scored:
        return []
    lines = scatter([(row["trial"], y, row["study_state"]) for row, y in scored], "trial", metric)
    params = sorted({path for row, _ in scored for path in row["params"]})
    for path in params:
        values = [(row["params"].get(path), y, row["study_state"]) for row, y in scored if path in row["params"]]
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v, _, _ in values):
            lines += ["", *scatter([(float(v), y, s) for v, y, s in values], path, metric, log_x=path in log_params)]
        else:
            best: dict[str, float] = {}
            maximize = status["objective"]["direction"] == "maximize"
            for value, y, _ in values:
                key = str(value)
                best[key] = y if key not in best else (max if maximize else min)(best[key], y)
            top = max(abs(v) for v in best.values()) or 1.0
            lines += ["", f"{metric} by {path} (best trial of each)"]
            lines += [f"{key:>16} |{'█' * max(1, round(abs(v) / top * 32))} {v:.4g}" for key, v in best.items()]
    lines.append("marks: ● complete  × pruned  · running  ! failed")
    return lines
