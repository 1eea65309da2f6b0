"""Reading job.yaml: YAML with line numbers, the JobSpec, and one clear line per problem.

Every problem is reported as `file:line: dotted.path: what is wrong; how to fix it`, the line being
where the YAML parser saw the key or value. Both halves load specs through here: `spotctl validate`
on a laptop and `python -m trainer run` on the instance.

Any file, however hostile, ends in a JobSpec or a SpecError, quickly: `bounded_yaml` reads and parses
within fixed limits, and every problem is printed as one line with the user's text escaped (`shown`).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from trainer.job import bounded_yaml, layout
from trainer.job.bounded_yaml import Refused
from trainer.job.shown import clip, printable
from trainer.job.spec import JobSpec, Problem, did_you_mean, inapplicable

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class LocatedProblem:
    source: str
    line: int | None
    path: str
    message: str

    def __str__(self) -> str:
        return self._line("")

    def as_warning(self) -> str:
        """`file:line: warning: path: message`, as compilers print a warning."""
        return self._line("warning: ")

    def _line(self, kind: str) -> str:
        # Escaped whole: the file name, a key or a value may hold a newline or a terminal escape.
        where = f"{self.source}:{self.line}" if self.line else self.source
        return printable(
            f"{where}: {kind}{self.path}: {self.message}" if self.path else f"{where}: {kind}{self.message}"
        )


class SpecError(ValueError):
    """A job file that cannot be used; carries every problem found, each with its line."""

    exit_code = 2

    def __init__(self, source: str, problems: list[LocatedProblem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @property
    def summary(self) -> str:
        count = len(self.problems)
        return printable(f"{self.source} is not a valid job spec ({count} problem{'s' * (count != 1)})")


Defaults = Callable[[dict], dict]

EXIT_BAD_SPEC = 2  # `python -m trainer`'s exit code for an invalid job file (trainer.run lists them all)


def load_or_report(location: str) -> JobSpec | None:
    """The job file's spec; None after printing its problems to stderr (the caller exits with
    EXIT_BAD_SPEC). Torch-free, so `python -m trainer` refuses a bad file before importing the trainer."""
    import sys

    try:
        return load_spec(location)
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"error: {exc.summary}", file=sys.stderr)
        return None
    except Exception as exc:  # a bug in the loader: still one line and exit 2, never a traceback for a file
        print(printable(f"error: {location}: unexpected {type(exc).__name__}: {clip(str(exc), 200)}"), file=sys.stderr)
        return None


def load_spec(location: str | Path, defaults: Defaults | None = None) -> JobSpec:
    """Load and fully validate a job file from a local path or any fsspec URL (s3://...)."""
    return load_checked(location, defaults)[0]


def load_checked(location: str | Path, defaults: Defaults | None = None) -> tuple[JobSpec, list[LocatedProblem]]:
    """`load_spec`, and the warnings: fields the file sets that have no effect there (`spec.inapplicable`)."""
    location = str(location)
    local = _local_path(location)
    return parse_checked(
        _read_text(location, local), source=location, base_dir=local.parent if local else None, defaults=defaults
    )


def parse_spec(
    text: str, source: str = layout.JOB_FILE, base_dir: Path | None = None, defaults: Defaults | None = None
) -> JobSpec:
    """Validate job.yaml text. Relative local paths in it are resolved against `base_dir`.
    `defaults(data)` gives values for keys the file leaves out (the deployed stack's storage...)."""
    return parse_checked(text, source, base_dir, defaults)[0]


def parse_checked(
    text: str, source: str = layout.JOB_FILE, base_dir: Path | None = None, defaults: Defaults | None = None
) -> tuple[JobSpec, list[LocatedProblem]]:
    """`parse_spec`, and the warnings, each with its line (a warning never makes a spec invalid)."""
    try:
        bounded_yaml.check_text(text)
    except Refused as exc:
        raise _refused(source, exc) from None
    data, lines = _parse_yaml(text, source)
    return validate_job(data, lines, source, base_dir, defaults)


def validate_job(
    data: dict, lines: dict, source: str, base_dir: Path | None = None, defaults: Defaults | None = None
) -> tuple[JobSpec, list[LocatedProblem]]:
    """A parsed job mapping (with its lines, `_parse_yaml`'s) as a JobSpec and its warnings; SpecError.
    A job inside another file (a sweep's inline `job:`) passes its part of that file's lines."""
    if defaults is not None and isinstance(data, dict):
        data = _fill_missing(data, defaults(data))
    try:
        spec = JobSpec.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise SpecError(source, _locate_pydantic(exc, data, lines, source)) from None
    problems = spec.problems()
    if problems:
        raise SpecError(source, [_locate(p, lines, source, key_line=False) for p in problems])
    warnings = [_locate(p, lines, source, key_line=True) for p in inapplicable(spec)]
    return spec, sorted(warnings, key=lambda p: (p.line or 0, p.path))


def read_mapping(location: str | Path) -> tuple[dict, dict[Loc, tuple[int, int]], Path | None]:
    """Another YAML file read as job files are (a sweep file: orchestrator.sweeps.spec): within the same
    bounds, as a mapping, with each key's (key line, value line) by location, and the folder its
    relative paths are relative to (None: a remote file). SpecError with the file's problems."""
    location = str(location)
    local = _local_path(location)
    data, lines = parse_mapping(_read_text(location, local), location)
    return data, lines, local.parent if local else None


def parse_mapping(text: str, source: str) -> tuple[dict, dict[Loc, tuple[int, int]]]:
    """`read_mapping` of text already read."""
    try:
        bounded_yaml.check_text(text)
    except Refused as exc:
        raise _refused(source, exc) from None
    return _parse_yaml(text, source)


def locate_errors(
    exc: ValidationError, data: dict, lines: dict, source: str, model: type[BaseModel]
) -> list[LocatedProblem]:
    """A pydantic error of `model` (validated from `data`) as one located line per problem."""
    return _locate_pydantic(exc, data, lines, source, model)


def locate(problem: Problem, lines: dict, source: str, key_line: bool = False) -> LocatedProblem:
    """A problem at a location (`Problem.loc`) of a file read by `read_mapping`, with its line: the
    value's (key_line: the key's), or the nearest enclosing key's when the location is not in the file."""
    return _locate(problem, lines, source, key_line)


def _fill_missing(data: dict, defaults: dict) -> dict:
    filled = dict(data)
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(filled.get(key, {}), dict):
            filled[key] = _fill_missing(filled.get(key) or {}, value)
        elif filled.get(key) is None:
            filled[key] = value
    return filled


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML (defaults filled in), as written next to a job's state. Without `notify`:
    its webhook URLs are credentials, and the stored job.yaml is readable by the trainer's role
    (orchestrator.jobs.notify keeps them under layout.notify_targets instead)."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude={"notify"}), sort_keys=False, allow_unicode=True)


# ------------------------------------------------------------------------------------------- reading
def _local_path(location: str) -> Path | None:
    """The local file a location names (a path or file:// URL), or None for a remote URL."""
    if location.startswith("file://"):
        return Path(urlparse(location).path)
    scheme = urlparse(location).scheme
    return Path(location) if len(scheme) <= 1 else None  # a one-letter scheme is a Windows drive


def _read_text(location: str, local: Path | None) -> str:
    try:
        return bounded_yaml.decode(bounded_yaml.read_local(local) if local is not None else _read_remote(location))
    except Refused as exc:
        raise _refused(location, exc) from None


def _read_remote(location: str) -> bytes:
    """At most MAX_BYTES + 1 bytes of the object (enough to tell a file over the limit)."""
    try:
        import fsspec

        from trainer.job.storage import reading

        fs, path = fsspec.core.url_to_fs(location)

        def read() -> bytes:
            return fs.cat_file(path, start=0, end=bounded_yaml.MAX_BYTES + 1)

        # S3 answers a missing key 403 to a role without an unconditioned ListBucket: settled by a listing.
        return bounded_yaml.check_size(reading(fs, path, read) if location.startswith("s3://") else read())
    except FileNotFoundError:
        raise Refused("no such file; check the path (examples/ has job files to start from)") from None
    except IsADirectoryError:
        raise Refused("is a folder; give the URL of a job .yaml file inside it") from None
    except PermissionError:
        raise Refused("cannot be read (permission denied)") from None
    except (OSError, ValueError, ImportError) as exc:  # a network error; a URL scheme fsspec does not know
        raise Refused(f"cannot be read ({type(exc).__name__}: {clip(str(exc), 200)}); check the URL") from None


def _refused(source: str, exc: Refused) -> SpecError:
    return SpecError(source, [LocatedProblem(source, exc.line, "", exc.message)])


def _parse_yaml(text: str, source: str) -> tuple[dict, dict[Loc, tuple[int, int]]]:
    loader = bounded_yaml.Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise SpecError(
                source, [LocatedProblem(source, None, "", "is empty; start from one of the files in examples/")]
            )
        duplicates: list[LocatedProblem] = []
        lines: dict[Loc, tuple[int, int]] = {}
        _index_lines(node, (), lines, duplicates, source)
        if duplicates:
            raise SpecError(source, duplicates)
        data = loader.construct_document(node)
    except Refused as exc:
        raise _refused(source, exc) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = clip(getattr(exc, "problem", None) or str(exc), 200)  # it may quote a whole tag or token
        where = f" (column {mark.column + 1})" if mark else ""
        hint = "; YAML indents with spaces, not tabs" if "\\t" in problem else "; check the indentation and quoting"
        raise SpecError(
            source,
            [LocatedProblem(source, mark.line + 1 if mark else None, "", f"YAML syntax error{where}: {problem}{hint}")],
        ) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        kind = _describe(data)
        raise SpecError(
            source,
            [
                LocatedProblem(
                    source, 1, "", f"the file must be a mapping with keys like name:, storage:, train:; got {kind}"
                )
            ],
        )
    return data, lines


def _index_lines(node, path: Loc, lines: dict, duplicates: list, source: str) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                kind = "a list" if isinstance(key_node, yaml.SequenceNode) else "a mapping"
                raise Refused(f"a key must be a name, not {kind}; write it as key: value", line)
            key = key_node.value
            if key in seen and key != "<<":
                dotted = _dotted((*path, key))
                duplicates.append(
                    LocatedProblem(
                        source, line, dotted, f"duplicate key (first set on line {seen[key]}); keep one of them"
                    )
                )
            seen.setdefault(key, line)
            lines[(*path, key)] = (line, value_node.start_mark.line + 1)
            _index_lines(value_node, (*path, key), lines, duplicates, source)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = (item.start_mark.line + 1,) * 2
            _index_lines(item, (*path, i), lines, duplicates, source)


# ---------------------------------------------------------------------------------------- locating
def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        part = part if isinstance(part, int) else clip(str(part))  # a key may be as long as a value
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _locate(problem: Problem, lines: dict, source: str, key_line: bool) -> LocatedProblem:
    loc = problem.loc
    while loc and loc not in lines:
        loc, key_line = loc[:-1], True  # a missing field: point at the section that should hold it
    line = lines[loc][0 if key_line else 1] if loc else None
    return LocatedProblem(source, line, _dotted(problem.loc), problem.message)


def _union_tag_at(loc: Loc, data) -> int | None:
    """Where pydantic named a union branch in a location ("literal['none','backbone']", "list[str]"):
    the first part that looks like one and is not a key of the data there (a key may hold `[` too)."""
    here = data
    for i, part in enumerate(loc):
        in_list = isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here)
        if in_list or (isinstance(here, dict) and part in here):
            here = here[part]
        elif isinstance(part, str) and ("[" in part or "'" in part):
            return i
        else:
            here = None
    return None


def _locate_pydantic(
    exc: ValidationError, data: dict, lines: dict, source: str, model: type[BaseModel] = JobSpec
) -> list[LocatedProblem]:
    plain, unions = [], {}
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        tag_at = _union_tag_at(loc, data)
        if tag_at is None:
            plain.append(error)
        else:
            unions.setdefault(loc[:tag_at], []).append(
                {**error, "loc": loc[:tag_at] + loc[tag_at + 1 :], "depth": len(loc) - tag_at - 1}
            )
    for loc, errors in unions.items():
        inner = [e for e in errors if e["depth"] > 0]
        if inner:  # the value had a branch's shape (a list, say): report what is wrong inside it
            plain += inner
        else:
            alternatives = " or ".join(_expected(e) for e in errors)
            plain.append(
                {
                    "type": "spec",
                    "loc": loc,
                    "input": errors[0]["input"],
                    "msg": f"expected {alternatives}; got {_describe(errors[0]['input'])}",
                }
            )
    located = []
    for error in plain:
        message = _message(error, model)
        key_line = error["type"] in ("extra_forbidden", "missing")
        located.append(_locate(Problem(tuple(error["loc"]), message), lines, source, key_line))
    return sorted(located, key=lambda p: (p.line or 0, p.path))


def _expected(error: dict) -> str:
    kind = error["type"]
    if kind == "literal_error":
        return error["ctx"]["expected"]
    return {
        "list_type": "a list",
        "string_type": "a string",
        "dict_type": "a mapping",
        "int_type": "a whole number",
    }.get(kind, error["msg"].lower())


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null (an empty value)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f"'{clip(value)}'"
    return clip(str(value))


_TYPE_NAMES = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string (quote it if it looks like a number)",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
}

_BOUNDS = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
}


def _message(error: dict, model: type[BaseModel] = JobSpec) -> str:
    kind, loc, value = error["type"], error["loc"], error.get("input")
    field = _field_at(loc, model)
    if kind == "spec":
        return error["msg"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1], model)
        hint = did_you_mean(str(loc[-1]), allowed) or f"; valid keys here: {', '.join(allowed)}"
        return f"unknown key '{clip(str(loc[-1]))}'{hint}"
    if kind == "missing":
        example = _example(field)
        deployed = (
            " (or run `spotctl infra deploy` once: job files may then leave it out)"
            if tuple(loc) == ("storage",)
            else ""
        )
        return f"required but missing; add {loc[-1]}:{' ' + example if example else ''}{deployed}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        return f"{_describe(value)} is not one of {', '.join(choices)}{did_you_mean(str(value), choices)}"
    if kind in _BOUNDS:
        bound = {key: _number(limit) for key, limit in error["ctx"].items()}
        return f"{_BOUNDS[kind].format(**bound)}, got {_describe(value)}{_default_hint(field)}"
    if value is None and kind in _TYPE_NAMES:
        return f"is empty; give a value{_default_hint(field)}"
    if kind in _TYPE_NAMES:
        return f"expected {_TYPE_NAMES[kind]}, got {_describe(value)}{_default_hint(field)}"
    if kind == "too_short" and isinstance(value, (list, tuple)) and not value:
        return "must not be empty; list at least one item or remove the key"
    if kind in ("too_short", "too_long"):
        expected = error["ctx"].get("min_length") if kind == "too_short" else error["ctx"].get("max_length")
        return f"expected {expected} items, got {len(value) if hasattr(value, '__len__') else _describe(value)}"
    return error["msg"][0].lower() + error["msg"][1:]


def _number(value) -> str:
    return str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else str(value)


def _default_hint(field) -> str:
    if field is None:
        return ""
    example = _example(field)
    return f" (e.g. {example})" if example else ""


def _example(field) -> str:
    """A value to suggest for a field: its default, else its first documented example."""
    if field is None:
        return ""
    if field.examples:
        return _yaml_inline(field.examples[0])
    if field.default is PydanticUndefined or field.default is None:
        return ""
    return _yaml_inline(field.default)


def _yaml_inline(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _model_in(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (X, X | None, list[X]), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def holds_values(annotation) -> bool:
    """Whether a field takes plain values too (`int | AutoBatch`: a number, or a section)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return holds_values(typing.get_args(annotation)[0])
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(holds_values(a) for a in arguments if a is not type(None))
    return _model_in(annotation) is None


model_in = _model_in  # for readers of other files that name job fields by path (orchestrator.sweeps.spec)


def _field_at(loc: Loc, model: type[BaseModel] | None = JobSpec):
    field = None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        model = _model_in(field.annotation)
    return field


def _allowed_keys(loc: Loc, model: type[BaseModel] | None = JobSpec) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        model = _model_in(model.model_fields[part].annotation) if model and part in model.model_fields else None
    return list(model.model_fields) if model else []
