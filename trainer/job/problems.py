"""What is wrong with a stored document, in one line a person can act on.

Both planes read JSON objects other programs wrote (trainer.job.documents): a torn upload, a hand edit,
another tool's file, a folder where a file should be. None of that may escape as an exception that
names nothing: each reader turns it into a `Problem`, the object's URL and what is wrong with it
(`not JSON (garbage at byte 0)`, `a JSON list, not an object`, `launched_at: "yesterday" is not a
date-time`), and shows the rest of what it knows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from trainer.job.shown import clip, printable

MAX_DEPTH = 64  # nesting a document may have: ours have 4; deeper is not ours (and would exhaust a reader's stack)


@dataclass(frozen=True)
class Problem:
    """One stored object that cannot be read as what it should be."""

    url: str
    problem: str

    def __str__(self) -> str:
        return f"{self.url}: {self.problem}"

    def as_dict(self) -> dict:
        return asdict(self)


def json_object(body: bytes | str) -> dict:
    """The JSON object `body` holds; otherwise ValueError saying, in one line, what it holds instead."""
    if isinstance(body, bytes):
        if not body:
            raise ValueError("empty (0 bytes)")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"not UTF-8 text (byte 0x{body[exc.start]:02x} at byte {exc.start})") from None
    else:
        text = body
    if not text.strip():
        raise ValueError(f"empty (only whitespace, {len(text.encode())} bytes)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        at = len(text[: exc.pos].encode())
        if exc.pos >= len(text.rstrip()) or exc.msg.startswith("Unterminated string"):
            raise ValueError(f"not JSON (cut short: it ends at byte {len(text.encode())})") from None
        what = "garbage" if exc.msg == "Expecting value" else exc.msg[0].lower() + exc.msg[1:]
        raise ValueError(f"not JSON ({what} at byte {at})") from None
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from None
    except ValueError:  # the one other refusal: an integer of more digits than Python converts (4300)
        raise ValueError("not JSON spotctl can read (an integer of thousands of digits)") from None
    if not isinstance(data, dict):
        raise ValueError(f"{_json_kind(data)}, not an object")
    if _depth(data) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return data


def field_problems(errors: list[dict]) -> dict[str, str]:
    """pydantic's validation errors as {dotted field: what is wrong with its value}, one per field."""
    found: dict[str, str] = {}
    for error in errors:
        where = _where(error.get("loc", ()))
        if where not in found:
            found[where] = _what(error)
    return found


def shown(value: Any) -> str:
    """A stored value as a problem quotes it: JSON (so a string reads "like this"), escaped and cut."""
    try:
        text = json.dumps(value, ensure_ascii=False)  # JSON escapes control characters; printable the rest
    except (TypeError, ValueError, RecursionError):
        text = repr(value)
    return clip(printable(text))


def io_problem(exc: OSError) -> str | None:
    """What an error reading an object says about the object itself (None: it says nothing of it, e.g.
    S3 failing or credentials refused, which the caller raises)."""
    if isinstance(exc, IsADirectoryError):
        return "a folder, not a file"
    if isinstance(exc, NotADirectoryError):
        return "its folder is a file"
    if isinstance(exc, PermissionError):
        return f"access denied ({_one_line(str(exc))})"
    return None


def _where(loc: tuple) -> str:
    parts = ""
    for part in loc:
        parts += f"[{part}]" if isinstance(part, int) else (f".{part}" if parts else str(part))
    return parts or "the document"


_TYPES = {
    "int": "is not an integer",
    "float": "is not a number",
    "string": "is not a string",
    "bool": "is not true or false",
    "dict": "is not an object",
    "model": "is not an object",
    "dataclass": "is not an object",
    "list": "is not a list",
}


def _what(error: dict) -> str:
    kind = str(error.get("type", ""))
    if kind == "missing":
        return "missing"
    value = shown(error.get("input"))
    if kind == "finite_number":
        return f"{value} is not a finite number"
    if kind in ("int_from_float",):
        return f"{value} is not an integer"
    stem = kind.split("_", 1)[0]
    if stem in _TYPES and (kind.endswith("_type") or "_parsing" in kind):
        return f"{value} {_TYPES[stem]}"
    if kind == "greater_than_equal":
        return f"{value} is below {error.get('ctx', {}).get('ge')}"
    message = _one_line(str(error.get("msg", "is not valid")))
    message = message.removeprefix("Value error, ")
    return f"{value} {message[0].lower() + message[1:] if message else 'is not valid'}"


def _json_kind(data: Any) -> str:
    if isinstance(data, list):
        return "a JSON list"
    if isinstance(data, str):
        return "a JSON string"
    if isinstance(data, bool):
        return "a JSON boolean"
    if data is None:
        return "JSON null"
    return "a JSON number"


def _depth(data: Any) -> int:
    """How deeply `data` nests, counted without recursion (a hostile document must not exhaust the stack)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _one_line(text: str) -> str:
    return printable(" ".join(text.split()))
