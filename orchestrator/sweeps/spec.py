"""sweep.yaml: a base job, a search space over its fields, the objective, and how to search.

Read like a job file (trainer.job.spec_file: the same bounds, one `file:line: path: what; fix` line per
problem, exit 2). Each searched path must name a field of the job, and every value the search may give
it (each choice, both ends of a range) is checked by building the job spec with it: a value the job
would refuse is refused here, before anything is launched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from trainer.job.problems import field_problems
from trainer.job.spec import JobSpec, Problem, Section, did_you_mean
from trainer.job.spec_file import (
    Defaults,
    LocatedProblem,
    SpecError,
    holds_values,
    load_checked,
    locate,
    locate_errors,
    model_in,
    parse_mapping,
    read_mapping,
    validate_job,
)

# What the trainer reports for each epoch (trainer.loop: the `epoch` records of metrics/*.jsonl).
METRICS = ("val_acc1", "val_acc5", "val_loss", "train_acc1", "train_acc5", "train_loss")
KINDS = ("float", "int", "choice")
UNSEARCHABLE = ("name", "storage", "region", "notify")  # the sweep's own, or per-account: not a hyper-parameter
MAX_TRIALS = 1000


class Objective(Section):
    metric: Literal[METRICS] = Field("val_acc1")  # type: ignore[valid-type]
    """The per-epoch metric to optimise; a trial's value is its best epoch's."""
    direction: Literal["maximize", "minimize"] | None = None
    """maximize or minimize; by default minimize for a loss, maximize for an accuracy."""

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize" if self.direction else not self.metric.endswith("loss")


class Pruner(Section):
    kind: Literal["median", "hyperband", "none"] = "median"
    """median: stop a trial whose epoch value is worse than the median of earlier trials' at that epoch;
    hyperband: successive halving over epochs; none: every trial runs to its end."""
    startup_trials: int = Field(2, ge=0, le=MAX_TRIALS)
    """median: trials finished before any is pruned."""
    warmup_epochs: int = Field(0, ge=0, le=10000)
    """median: epochs of each trial never pruned."""


class SweepFile(Section):
    """A search over a job's hyper-parameters: each trial is an ordinary spotctl job `<sweep>-t<k>`."""

    name: str | None = None
    """The sweep's name (sweep ids start with it); by default the job's name."""
    job: str | dict[str, Any]
    """The base job: a job file's path (relative to this file) or the job inline."""
    search: dict[str, Any] = Field(min_length=1)
    """Dotted job field -> {float: [low, high], log: true} | {int: [low, high]} | {choice: [a, b, ...]}."""
    objective: Objective = Field(default_factory=Objective)
    """What the study optimises."""
    trials: int = Field(ge=1, le=MAX_TRIALS)
    """How many trials in all."""
    parallel: int = Field(1, ge=1, le=100)
    """At most this many trials at once."""
    sampler: Literal["tpe", "random", "grid"] = "tpe"
    """How the next trial's values are chosen: tpe (Optuna's default), random, grid (choices and ints only)."""
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    """The sampler's seed."""
    pruner: Pruner = Field(default_factory=Pruner)
    """When a trial is stopped early ('median' is short for {kind: median})."""
    budget_usd: float | None = Field(None, gt=0, le=1_000_000)
    """The sweep's spending limit in dollars: no new trial once it would be passed, then running ones stop."""

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_shorthand(cls, value):
        return {"kind": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _parallel_within_trials(self):
        self.parallel = min(self.parallel, self.trials)
        return self


class Param(BaseModel):
    """One searched field, as validated."""

    path: str
    kind: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    def distribution(self):
        import optuna.distributions as d

        if self.kind == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log)
        if self.kind == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log)
        return d.CategoricalDistribution(self.choices)

    def grid(self) -> list[Any]:
        return list(self.choices) if self.kind == "choice" else list(range(int(self.low), int(self.high) + 1))


class Sweep(BaseModel):
    """A valid sweep: its file's settings, the base job (resolved) and the searched fields."""

    settings: SweepFile
    base: JobSpec
    params: list[Param]

    @property
    def name(self) -> str:
        return self.settings.name or self.base.name

    def trial_spec(self, values: dict[str, Any]) -> JobSpec:
        """The base job with a trial's values at their paths (ValidationError, ValueError: refused)."""
        return with_values(self.base, values)


def with_values(base: JobSpec, values: dict[str, Any]) -> JobSpec:
    data = base.model_dump(mode="json")
    for path, value in values.items():
        *parents, leaf = path.split(".")
        here = data
        for part in parents:
            if not isinstance(here.get(part), dict):  # an optional section left out (None)
                here[part] = {}
            here = here[part]
        here[leaf] = value
    spec = JobSpec.model_validate(data)
    problems = spec.problems()
    if problems:
        raise ValueError("; ".join(f"{'.'.join(map(str, p.loc))}: {p.message}" for p in problems))
    return spec


def load_sweep(location: str | Path, defaults: Defaults | None = None) -> Sweep:
    """The sweep file, its base job and every searched value validated; SpecError with each problem."""
    source = str(location)
    data, lines, base_dir = read_mapping(source)
    return _validated(data, lines, source, base_dir, defaults)


def dump_sweep(sweep: Sweep) -> bytes:
    """The sweep as stored at launch (sweeps/<id>/sweep.yaml): its settings, the base job resolved inline
    (without notify: webhook URLs are credentials, kept under secrets/ for each trial's job)."""
    settings = sweep.settings.model_dump(mode="json", exclude={"job"})
    settings["name"] = sweep.name
    settings["job"] = sweep.base.model_dump(mode="json", exclude={"notify"})
    return yaml.safe_dump(settings, sort_keys=False, allow_unicode=True).encode()


def stored_sweep(body: bytes, source: str) -> Sweep:
    """A stored sweep.yaml read back (SpecError when it is not a valid sweep any more)."""
    data, lines = parse_mapping(body.decode(errors="replace"), source)
    return _validated(data, lines, source, None, None)


def _validated(data: dict, lines: dict, source: str, base_dir: Path | None, defaults: Defaults | None) -> Sweep:
    try:
        settings = SweepFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError(source, locate_errors(exc, data, lines, source, SweepFile)) from None
    base = _base_job(settings, lines, source, base_dir, defaults)
    problems: list[LocatedProblem] = []
    params = []
    for path, entry in settings.search.items():
        param, found = _param(path, entry, base)
        problems += [locate(p, lines, source) for p in found]
        if param is not None:
            params.append(param)
    if not problems and settings.sampler == "grid":
        problems += [locate(p, lines, source) for p in _grid_problems(params, settings.trials)]
    if problems:
        raise SpecError(source, sorted(problems, key=lambda p: (p.line or 0, p.path)))
    return Sweep(settings=settings, base=base, params=params)


def _base_job(
    settings: SweepFile, lines: dict, source: str, base_dir: Path | None, defaults: Defaults | None
) -> JobSpec:
    if isinstance(settings.job, str):
        path = Path(settings.job)
        if base_dir is not None and not path.is_absolute() and "://" not in settings.job:
            path = base_dir / path
        return load_checked(str(path) if "://" not in settings.job else settings.job, defaults)[0]
    inner = {loc[1:]: where for loc, where in lines.items() if loc[:1] == ("job",) and len(loc) > 1}
    try:
        return validate_job(settings.job, inner, source, base_dir, defaults)[0]
    except SpecError as exc:  # the inline job's paths are under `job.` in this file
        raise SpecError(
            source,
            [LocatedProblem(p.source, p.line, f"job.{p.path}" if p.path else "job", p.message) for p in exc.problems],
        ) from None


def _param(path: str, entry: Any, base: JobSpec) -> tuple[Param | None, list[Problem]]:
    loc = ("search", path)
    wrong = _path_problem(path)
    if wrong:
        return None, [Problem(loc, wrong)]
    example = "e.g. {float: [0.0001, 0.1], log: true}, {int: [1, 4]} or {choice: [32, 64]}"
    if not isinstance(entry, dict):
        return None, [Problem(loc, f"expected a mapping with one of {', '.join(KINDS)}; {example}")]
    kinds = [k for k in KINDS if k in entry]
    unknown = [k for k in entry if k not in (*KINDS, "log")]
    if unknown:
        key = str(unknown[0])
        return None, [Problem((*loc, key), f"unknown key '{key}'{did_you_mean(key, [*KINDS, 'log'])}; {example}")]
    if len(kinds) != 1:
        return None, [Problem(loc, f"give exactly one of {', '.join(KINDS)}; {example}")]
    kind = kinds[0]
    value = entry[kind]
    log = entry.get("log", False)
    if not isinstance(log, bool):
        return None, [Problem((*loc, "log"), "expected true or false")]
    if kind == "choice":
        if not isinstance(value, list) or not value:
            return None, [Problem((*loc, kind), "expected a non-empty list of values, e.g. [32, 64]")]
        if log:
            return None, [Problem((*loc, "log"), "log applies to float and int ranges, not choices; remove it")]
        if any(isinstance(v, dict | list) for v in value):
            return None, [Problem((*loc, kind), "each choice must be a single value (a number, a string, true/false)")]
        problems = [
            Problem((*loc, kind, i), why) for i, choice in enumerate(value) if (why := _refused(base, path, choice))
        ]
        if len({repr(v) for v in value}) != len(value):
            problems.append(Problem((*loc, kind), "lists a value twice; list each choice once"))
        return (None if problems else Param(path=path, kind=kind, choices=value)), problems
    integer = kind == "int"
    if not isinstance(value, list) or len(value) != 2 or not all(_is_number(v, integer) for v in value):
        what = "whole numbers" if integer else "numbers"
        return None, [
            Problem((*loc, kind), f"expected [low, high], two {what}, e.g. {'[1, 4]' if integer else '[0.0001, 0.1]'}")
        ]
    low, high = value
    if not low < high:
        return None, [Problem((*loc, kind), f"low ({low}) must be below high ({high})")]
    if log and low <= 0:
        return None, [Problem((*loc, kind), f"a log range must start above 0, got {low}")]
    problems = [Problem((*loc, kind, i), why) for i, end in enumerate(value) if (why := _refused(base, path, end))]
    if not problems and kind == "float" and not log:
        mid = (low + high) / 2
        if why := _refused(base, path, mid):
            problems.append(Problem((*loc, kind), why))
    param = Param(path=path, kind=kind, low=low, high=high, log=log)
    return (None if problems else param), problems


def _is_number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def _path_problem(path: str) -> str | None:
    """What is wrong with a dotted path into the job (None: it names a field that holds a value)."""
    model: type[BaseModel] | None = JobSpec
    parts = path.split(".")
    if parts[0] in UNSEARCHABLE:
        return f"'{parts[0]}' is not searched (the sweep sets it, or it is the account's); search train.* or compute.* fields"
    done: list[str] = []
    values = False
    for part in parts:
        if model is None:
            return f"'{'.'.join(done)}' holds a value, not fields; search '{'.'.join(done)}' itself"
        if part not in model.model_fields:
            where = f"'{'.'.join(done)}'" if done else "a job"
            return f"names no field: {where} has no '{part}'{did_you_mean(part, list(model.model_fields))}"
        done.append(part)
        annotation = model.model_fields[part].annotation
        model, values = model_in(annotation), holds_values(annotation)
    if model is not None and not values:
        return f"'{path}' is a section; name one of its fields, e.g. {path}.{next(iter(model.model_fields))}"
    return None


def _refused(base: JobSpec, path: str, value: Any) -> str | None:
    """Why the job would refuse `value` at `path` (None: it takes it)."""
    try:
        with_values(base, {path: value})
    except ValidationError as exc:
        problems = field_problems(exc.errors(include_url=False))
        return "the job refuses it: " + "; ".join(f"{where}: {what}" for where, what in problems.items())
    except ValueError as exc:
        return f"the job refuses it: {exc}"
    return None


def _grid_problems(params: list[Param], trials: int) -> list[Problem]:
    problems = [
        Problem(("search", p.path), "the grid sampler takes choices and int ranges; give choices, or use sampler: tpe")
        for p in params
        if p.kind == "float"
    ]
    if problems:
        return problems
    size = math.prod(len(p.grid()) for p in params)
    if trials > size:
        return [Problem(("trials",), f"is {trials}, more than the grid's {size} points; set trials: {size}")]
    return []
