"""Fuzzing job files: a few hundred seeded mutations of examples/*.yaml, each loaded in-process through
the loader every command uses; each must load or raise SpecError (never another exception), and
every problem must be one printable line.

The work is bounded, not timed: VARIANTS variants, each at most a few times an example's size plus
one fragment (at most `bounded_yaml.MAX_BYTES`), and the loader's own limits (values, depth) bound
what any one of them can cost."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from testbed import REPO
from trainer.job import bounded_yaml
from trainer.job.spec_file import SpecError, load_checked

SEED = 17
VARIANTS = 400
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))

# Pieces of YAML syntax and hostile values, inserted at random places.
FRAGMENTS = [
    "&a ", "*a", "*undefined", "<<: *a\n", "<<: [*a, *a]\n", "&a [*a]", "? [a, b]\n: 1\n", "? {a: 1}\n",
    "[", "]", "{", "}", ", ", ": ", "- ", "? ", "|\n", ">-\n", "'", '"', "#", "\t", "\\", "%", "@", "`",
    "!!python/object/apply:os.system [echo]", "!!python/name:os.system", "!!binary aGk=", "!!set {a}",
    "!!timestamp 2001-12-14", "!!float", "!!int", "!!str", "!!map", "!!seq", "!local ", "!<tag:x> ",
    "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\n", "\r", "\r\n", "  ", "\n  ",
    "\x00", "\x07", "\x1b[31m", "\x1b]0;title\x07", "\x7f", "\x85", "\u2028", "\u202e", "\ufeff", "\ud800",
    '"\\e[2J"', '"a\\nb"', '"\\x00"', '"\\u202e"', '"\\r"', "'a''b'",
    "1e999", "-.inf", ".nan", "0x" + "f" * 90, "0o777", "0b101", "1:30:00", "1_000", "~", "null", "yes", "NO",
    "9" * 99, "9" * 5000, "0x" + "f" * 5000, "x" * 3000, "k" * 300 + ": 1\n",
    "[" * 40 + "]" * 40, "{a: " * 40 + "}" * 40, "- " * 40 + "x",
]  # fmt: skip


# Values put in place of a setting's: out of range, of another type, non-finite, escaped controls.
VALUES = [
    "1e999", "-1e999", ".nan", ".inf", "-0", "0", "-1", "1e-320", "99999999999999999999", "0x" + "f" * 90,
    "0.0000001", "1:20", "[]", "{}", "[1, 2]", "{a: 1}", "[[[]]]", "~", "true", "off", "2001-12-14", "0000-01-01",
    "!!binary aGk=", "!!set {a}", "!!str 1", '"\\e[31mred"', '"a\\nb"', '"\\u202egpj.exe"', '"\\x07"',
    '"' + "x" * 2000 + '"', "s3://", "s3://" + "b" * 70 + "/x", "./" + "../" * 30, "/dev/zero", "file:///etc/passwd",
    "resnet", "DEFAULT", "-", "''", "' '", "|\n  a\n  b\n",
]  # fmt: skip


def bomb(levels: int, width: int) -> str:
    lines = ['l0: &l0 ["lol"]']
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def mutate(rng: random.Random, raw: bytes) -> bytes:
    """One variant of an example's bytes: one to three mutations of the kinds a hostile file holds."""
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(raw) + 1)
        kind = rng.randrange(11)
        if kind == 0 and raw:  # a byte flipped to any value (invalid UTF-8 included)
            at = min(at, len(raw) - 1)
            raw = raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1 :]
        elif kind in (1, 2, 3):  # a fragment of YAML syntax or a hostile value
            raw = raw[:at] + rng.choice(FRAGMENTS).encode("utf-8", "surrogatepass") + raw[at:]
        elif kind == 4:  # truncated
            raw = raw[:at]
        elif kind == 5:  # an alias bomb in front, its top alias used somewhere
            levels, width = rng.randint(2, 9), rng.randint(2, 10)
            raw = bomb(levels, width).encode() + raw[:at] + f"*l{levels - 1}".encode() + raw[at:]
        elif kind == 6:  # deep nesting, flow or block
            depth = rng.choice([10, 33, 200, 3000])
            if rng.random() < 0.5:
                nested = "[" * depth + "]" * depth
            else:  # a line per level, each indented one more: quadratic, so fewer levels
                nested = "".join(" " * i + "k:\n" for i in range(min(depth, 300)))
            raw = raw[:at] + nested.encode() + raw[at:]
        elif kind == 7:  # a line repeated (duplicate keys) or dropped
            lines = raw.split(b"\n")
            i = rng.randrange(len(lines))
            lines[i : i + 1] = [lines[i]] * rng.choice([0, 2, 3])
            raw = b"\n".join(lines)
        elif kind in (9, 10):  # one setting's value replaced
            lines = raw.split(b"\n")
            settings = [i for i, line in enumerate(lines) if b": " in line and not line.lstrip().startswith(b"#")]
            if settings:
                i = rng.choice(settings)
                lines[i] = lines[i].split(b": ")[0] + b": " + rng.choice(VALUES).encode()
            raw = b"\n".join(lines)
        else:  # indentation shifted on one line
            lines = raw.split(b"\n")
            i = rng.randrange(len(lines))
            lines[i] = (b" " * rng.randint(1, 3) + lines[i]) if rng.random() < 0.5 else lines[i].lstrip()
            raw = b"\n".join(lines)
    return raw


def variants() -> list[bytes]:
    rng = random.Random(SEED)
    originals = [path.read_bytes() for path in EXAMPLES]
    return [mutate(rng, rng.choice(originals)) for _ in range(VARIANTS)]


def test_the_fuzzer_works_on_every_example_and_stays_small():
    assert len(EXAMPLES) >= 4
    found = variants()
    assert len(set(found)) > VARIANTS * 0.9  # mutations, not copies
    assert max(map(len, found)) <= bounded_yaml.MAX_BYTES  # the work each variant can cost is bounded


def test_every_variant_loads_or_is_a_spec_error(tmp_path: Path):
    outcomes = {"loaded": 0, "refused": 0}
    for n, raw in enumerate(variants()):
        job = tmp_path / f"v{n:03}.yaml"
        job.write_bytes(raw)
        try:
            load_checked(job)
            outcomes["loaded"] += 1
        except SpecError as exc:
            outcomes["refused"] += 1
            assert exc.problems, raw
            for line in [*map(str, exc.problems), exc.summary]:
                assert line.isprintable(), (raw, line)  # one line, nothing raw for the terminal
                assert line.startswith(str(job)), (raw, line)
        except Exception as exc:  # what this test exists to find
            pytest.fail(f"{type(exc).__name__}: {exc} on variant {n}: {raw[:300]!r}")
    assert outcomes["loaded"] > 0 and outcomes["refused"] > VARIANTS / 2, outcomes
