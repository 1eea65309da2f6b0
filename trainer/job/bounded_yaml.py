"""A job file as untrusted input: its bytes, its text and its YAML, each within a fixed limit.

Whatever a file holds, reading it ends in well under a second and a few megabytes, either with the
YAML node tree or with `Refused` (what is wrong, and the line where there is one). The hazards are
those of YAML and of files themselves:

- a FIFO or a device blocks `open()` or never ends: only regular files are opened, non-blocking;
- a huge file takes the pure-Python parser seconds per megabyte: at most `MAX_BYTES` are read;
- aliases expand ("billion laughs": nine lines that stand for 10**9 values) and an alias inside its
  own anchor makes a cycle: values are counted as expanded while composing, and a cycle is refused;
- nesting recurses in the composer, in our line index and in pydantic: `MAX_DEPTH`, aliases included;
- a tag like `!!python/object` names Python code to run: the safe loader builds none, and any tag
  but YAML's own is refused with its line;
- a 100000-digit integer makes `int()` raise ValueError (Python's conversion limit): numbers are short;
- control characters: the YAML reader refuses raw ones without a line, and escapes in quoted
  strings make keys and values holding ESC or newlines: both are refused with their line.
"""

from __future__ import annotations

import codecs
import os
import re
import stat
from pathlib import Path

import yaml
from yaml.events import AliasEvent, ScalarEvent

from trainer.job.shown import clip

MAX_BYTES = 256 * 1024  # a job file is a few KiB; the pure-Python parser reads 1-4 MiB/s
MAX_DEPTH = 32  # nesting levels, aliases expanded; a job file nests 4
MAX_VALUES = 10_000  # keys and values, each alias counted as all it stands for; a job file has ~100
MAX_SCALAR_CHARS = 2048  # one key or value: an S3 URL is at most ~1100 characters
MAX_NUMBER_CHARS = 100  # an int or float as written: int() of 4300+ digits raises, and no setting needs more

YAML_TAGS = "tag:yaml.org,2002:"  # written !! in a file
INT_TAG, FLOAT_TAG = f"{YAML_TAGS}int", f"{YAML_TAGS}float"
KEY_TAGS = (f"{YAML_TAGS}merge", f"{YAML_TAGS}value")  # `<<` and `=`: the constructor reads them as keys
_UNICODE_BOMS = {
    codecs.BOM_UTF32_LE: "UTF-32",
    codecs.BOM_UTF32_BE: "UTF-32",
    codecs.BOM_UTF16_LE: "UTF-16",
    codecs.BOM_UTF16_BE: "UTF-16",
}
_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # what YAML counts as a line break


class Refused(Exception):
    """A file that cannot be read as a job file within the limits: what is wrong, and where."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.message, self.line = message, line


# -------------------------------------------------------------------------------------------- bytes
def read_local(path: Path) -> bytes:
    """The bytes of a regular file, at most MAX_BYTES of them."""
    try:
        info = os.stat(path)  # follows links: a loop is ELOOP here, before any open()
    except FileNotFoundError:
        raise Refused("no such file; check the path (examples/ has job files to start from)") from None
    except PermissionError:
        raise Refused("cannot be read (permission denied)") from None
    except OSError as exc:  # a symlink loop, a name too long, a file used as a folder
        raise Refused(f"cannot be read ({exc.strerror or exc}); give the path of a job .yaml file") from None
    if stat.S_ISDIR(info.st_mode):
        raise Refused("is a folder; give the path of a job .yaml file inside it")
    if not stat.S_ISREG(info.st_mode):
        raise Refused(f"is {_kind(info.st_mode)}, not a file; give the path of a job .yaml file")
    if info.st_size > MAX_BYTES:
        raise Refused(_too_large(f"{info.st_size} bytes"))
    try:
        # Non-blocking: were a FIFO put in its place since the stat, open() would wait for a writer.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except PermissionError:
        raise Refused("cannot be read (permission denied)") from None
    except OSError as exc:
        raise Refused(f"cannot be read ({exc.strerror or exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused("is not a regular file; give the path of a job .yaml file")
        raw = _read_at_most(fd, MAX_BYTES + 1)  # a file that grew, or /proc's that say size 0
    except OSError as exc:
        raise Refused(f"cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    return check_size(raw)


def check_size(raw: bytes | str) -> bytes | str:
    """`raw`, unless it is over MAX_BYTES (a reader asks for MAX_BYTES + 1 to know)."""
    if len(raw) > MAX_BYTES:
        raise Refused(_too_large(f"more than {MAX_BYTES} {'bytes' if isinstance(raw, bytes) else 'characters'}"))
    return raw


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, left = [], limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _too_large(size: str) -> str:
    return f"is too large for a job file ({size}; the limit is {MAX_BYTES // 1024} KiB); is it the right file?"


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


# --------------------------------------------------------------------------------------------- text
def decode(raw: bytes) -> str:
    """UTF-8 text (a leading BOM is YAML's to skip), or Refused naming the line of the first bad byte."""
    for bom, name in _UNICODE_BOMS.items():
        if raw.startswith(bom):
            raise Refused(f"is {name} text; save the job file as UTF-8", line=1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        column = exc.start - (before.rfind(b"\n") + 1) + 1
        raise Refused(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); save the job file as UTF-8",
            line=line,
        ) from None


def check_text(text: str) -> str:
    """`text`, unless it is too long or holds a character the YAML reader refuses (named, with its line)."""
    check_size(text)
    bad = yaml.reader.Reader.NON_PRINTABLE.search(text)
    if bad:
        line, column = _position(text, bad.start())
        raise Refused(
            f"control character {_named(bad.group())} at column {column}; a job file is text: remove it", line=line
        )
    return text


def _position(text: str, index: int) -> tuple[int, int]:
    """(line, column), both from 1, of text[index], lines broken as YAML breaks them."""
    line, start = 1, 0
    for found in _BREAK.finditer(text, 0, index):
        line, start = line + 1, found.end()
    return line, index - start + 1


def _named(char: str) -> str:
    return repr(char)[1:-1] if not char.isprintable() else f"U+{ord(char):04X}"


# --------------------------------------------------------------------------------------------- YAML
class Loader(yaml.SafeLoader):
    """PyYAML's safe loader (no tags that build Python objects), composing within the limits above.

    Composition is where aliases are resolved, so it is where they are counted: every node adds one
    value and every alias adds all the values of its anchor, so `values` is the size of the document
    as a consumer walking it would see it, known before anyone walks it."""

    def __init__(self, text: str):
        super().__init__(text)
        self.values = 0
        self.depth = 0
        self._open: set[str] = set()  # anchors being composed: an alias to one is a cycle
        self._size: dict[str, int] = {}  # anchor -> the values it stands for
        self._height: dict[int, int] = {}  # id(node) -> levels below and including it

    def compose_node(self, parent, index):
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            return self._alias(event, line, parent, index)
        if self.depth >= MAX_DEPTH:
            raise Refused(f"nested more than {MAX_DEPTH} levels deep; a job file nests a few", line)
        if isinstance(event, ScalarEvent):
            _check_scalar(event.value, line)
        before = self.values
        self._count(1, line)
        anchor = event.anchor
        if anchor in self.anchors:
            first = _line(self.anchors[anchor])
            raise Refused(f"anchor &{clip(anchor)} is defined twice (first on line {first}); rename one", line)
        if anchor is not None:
            self._open.add(anchor)
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
            self._open.discard(anchor)
        if node.tag not in self.yaml_constructors and node.tag not in KEY_TAGS:  # !!python/object and friends
            tag = clip(node.tag.replace(YAML_TAGS, "!!"))
            message = f"the tag {tag} is not allowed in a job file; remove it: values are plain strings, numbers"
            raise Refused(f"{message}, lists and mappings", line)
        if node.tag in (INT_TAG, FLOAT_TAG) and len(node.value) > MAX_NUMBER_CHARS:
            raise Refused(
                f"a number of {len(node.value)} characters; no setting needs more than {MAX_NUMBER_CHARS}", line
            )
        self._height[id(node)] = 1 + max((self._height[id(child)] for child in _children(node)), default=0)
        if anchor is not None:
            self._size[anchor] = self.values - before
        return node

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, TypeError, AttributeError, KeyError, OverflowError):
            # PyYAML's constructors trust the resolver: a value that only looks like its type
            # (0000-01-01, a date in year 0) or an explicit tag on the wrong text (!!bool maybe,
            # !!timestamp soon) raises from int(), datetime() or a regex that did not match.
            tag = node.tag.replace(YAML_TAGS, "")
            message = f"'{clip(str(node.value))}' is not a valid {tag}; quote it if it is text"
            raise Refused(message, _line(node)) from None

    def _alias(self, event: AliasEvent, line: int, parent, index):
        name = clip(event.anchor)
        if event.anchor in self._open:
            raise Refused(f"alias *{name} is inside its own anchor &{name}; a value cannot contain itself", line)
        node = super().compose_node(parent, index)  # an undefined alias: the composer's error
        if self.depth + self._height[id(node)] > MAX_DEPTH:
            raise Refused(f"alias *{name} nests more than {MAX_DEPTH} levels deep; a job file nests a few", line)
        self._count(self._size[event.anchor], line, f" (alias *{name} stands for {self._size[event.anchor]})")
        return node

    def _count(self, values: int, line: int, why: str = "") -> None:
        self.values += values
        if self.values > MAX_VALUES:
            raise Refused(
                f"more than {MAX_VALUES} keys and values, aliases expanded{why}; a job file has about a hundred",
                line,
            )


def _check_scalar(value: str, line: int) -> None:
    if len(value) > MAX_SCALAR_CHARS:
        raise Refused(f"a key or value of {len(value)} characters; the limit is {MAX_SCALAR_CHARS}", line)
    if not value.isprintable():  # escapes in a quoted string ("\e[31m", "\n", "\u202e"), or a block scalar
        bad = next(c for c in value if not c.isprintable())
        raise Refused(
            f"'{clip(value)}' holds the control character {_named(bad)}; "
            "keys and values are names, paths and numbers: remove it",
            line,
        )


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
