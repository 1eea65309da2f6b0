"""Hostile job files: whatever a file holds, `spotctl validate` answers with exit code 2, one line per
problem (`file:line: ...` where there is a line) and the summary, nothing raw for the terminal and
no traceback; it never hangs, and no file costs more than the loader's limits (`bounded_yaml`).

One test per class of hazard, several cases each. The real entry points run as subprocesses at the
end of this file (spotctl) and in tests/trainer/test_hostile_job_file.py (`python -m trainer run`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from testbed import REPO
from trainer.job import bounded_yaml
from trainer.job.shown import clip, printable
from trainer.job.spec_file import load_checked

VALID = "name: demo\nstorage: ./runs\ntrain:\n  model: {name: resnet18, weights: null}\n  data: {train: ./data}\n"


def refused(spotctl, path, line: int | None, *words: str, source: str | None = None) -> str:
    """The one problem `spotctl validate PATH` reports (asserting the shape of the whole answer)."""
    code, out, err = spotctl("validate", str(path))
    assert (code, out) == (2, ""), err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert err.endswith("\n") and all(text.isprintable() for text in lines), repr(err)  # nothing raw
    source = source or str(path)
    assert len(lines) == 2, lines  # the problem and the summary: one line each
    assert lines[0].startswith(f"{source}:{line}: " if line else f"{source}: "), (lines[0], line)
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert lines[1] == f"error: {source} is not a valid job spec (1 problem)"
    return lines[0]


def write(tmp_path, text: str | bytes, name: str = "job.yaml"):
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    return path


def laughs(levels: int = 9, width: int = 9, indent: str = "") -> str:
    lines = [f'{indent}a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ alias bombs
ALIAS_BOMBS = {
    # name: (text, line of the alias that crosses the limit)
    "billion laughs": ("name: lol\n" + laughs(), 6),
    "billion laughs inside train": ("name: lol\ntrain:\n" + laughs(indent="  "), 7),
    "one anchor, 10001 aliases": ("a: &a x\nb: [" + ", ".join(["*a"] * 10_001) + "]\n", 2),
    "mappings": (
        "k0: &k0 {a: 1, b: 2, c: 3, d: 4}\n"
        + "".join(f"k{i}: &k{i} {{a: *k{i - 1}, b: *k{i - 1}, c: *k{i - 1}, d: *k{i - 1}}}\n" for i in range(1, 9)),
        6,
    ),
    "merge keys": (
        "m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}\n"
        + "".join(
            f"m{i}: &m{i}\n  <<: [{', '.join([f'*m{i - 1}'] * 8)}]\n  k{i}: 1\n" for i in range(1, 6)
        ),  # each level: eight merges of the last
        9,
    ),
}


@pytest.mark.parametrize("case", ALIAS_BOMBS, ids=str)
def test_alias_bombs_are_counted_as_expanded_and_refused_at_the_alias(case, tmp_path, spotctl):
    text, line = ALIAS_BOMBS[case]
    job = write(tmp_path, text)
    refused(spotctl, job, line, f"more than {bounded_yaml.MAX_VALUES} keys and values, aliases expanded")


def test_aliases_and_merge_keys_of_a_real_size_still_work(tmp_path, spotctl):
    job = write(
        tmp_path,
        textwrap.dedent("""\
            name: demo
            storage: &root ./runs
            train:
              model: {name: resnet18, weights: null}
              data: {train: ./data, val: ./data}
              optimizer:
                param_groups:
                  - &group {prefixes: [layer1], lr: 0.001}
                  - {<<: *group, prefixes: [layer2]}
            """),
    )
    spec, warnings = load_checked(job)
    assert [g.prefixes for g in spec.train.optimizer.param_groups] == [["layer1"], ["layer2"]]
    assert spec.train.optimizer.param_groups[1].lr == 0.001
    assert spotctl("validate", str(job))[0] == 0


# ------------------------------------------------------------------------- cycles and deep nesting
NESTING = {
    # name: (text, line, words)
    "a list holding itself": ("name: x\na: &a [1, *a]\n", 2, ["alias *a is inside its own anchor &a"]),
    "a mapping holding itself": ("name: x\ntrain: &t\n  model: *t\n", 3, ["alias *t is inside its own anchor &t"]),
    "a merge of itself": ("name: x\na: &m\n  b: 1\n  <<: *m\n", 4, ["alias *m is inside its own anchor &m"]),
    "5000 flow lists": ("name: x\ntrain: " + "[" * 5000 + "]" * 5000 + "\n", 2, ["nested more than 32 levels"]),
    "200 block mappings": (
        "name: x\n" + "".join(" " * i + f"k{i}:\n" for i in range(200)),
        33,
        ["nested more than 32 levels"],
    ),
    "40 flow mappings": ("name: x\ntrain: " + "{a: " * 40 + "1" + "}" * 40 + "\n", 2, ["nested more than 32"]),
    "aliases nesting deeper and deeper": (
        "l0: &l0 [x]\n" + "".join(f"l{i}: &l{i} [*l{i - 1}]\n" for i in range(1, 40)),
        31,
        ["alias *l29 nests more than 32 levels deep"],
    ),
    "an anchor defined twice": ("a: &x 1\nb: &x 2\n", 2, ["anchor &x is defined twice (first on line 1)"]),
}


@pytest.mark.parametrize("case", NESTING, ids=str)
def test_cycles_and_deep_nesting_are_refused_with_their_line(case, tmp_path, spotctl):
    text, line, words = NESTING[case]
    refused(spotctl, write(tmp_path, text), line, *words)


# --------------------------------------------------------------------------------- control characters
CONTROLS = {
    # name: (text, line, words): raw ones the YAML reader refuses, and escapes that make them in a string
    "raw NUL in a value": ("name: de\x00mo\n", 1, ["control character \\x00 at column 9"]),
    "raw ESC in a comment": ("name: demo\n# \x1b[2J\x1b[H cleared\n", 2, ["control character \\x1b at column 3"]),
    "raw BEL in a key": ("name: demo\nstorage: ./r\ntr\x07ain: {}\n", 3, ["\\x07 at column 3"]),
    "raw CSI (C1)": ("name: demo\n\x9b31m: 1\n", 2, ["control character \\x9b at column 1"]),
    "raw DEL": ("\x7fname: demo\n", 1, ["control character \\x7f at column 1"]),
    "escaped ESC in a value": ('name: demo\nstorage: "\\e[31m./runs"\n', 2, ["'\\x1b[31m./runs' holds", "\\x1b"]),
    "escaped newline in a key": (
        'name: demo\n"train\\nname": x\n',
        2,
        ["'train\\nname' holds the control character \\n"],
    ),
    "BiDi override in a value": (
        'name: "\\u202eexe.txt"\n',
        1,
        ["'\\u202eexe.txt' holds the control character \\u202e"],
    ),
    "carriage return in a value": (
        "name: 'a\\r'\nstorage: \"x\\ry\"\n",
        2,
        ["'x\\ry' holds the control character \\r"],
    ),
    "a lone surrogate": ('name: "\\ud800"\n', 1, ["holds the control character \\ud800"]),
    "a block scalar of two lines": ("name: |\n  one\n  two\n", 1, ["'one\\ntwo\\n' holds the control character \\n"]),
}


@pytest.mark.parametrize("case", CONTROLS, ids=str)
def test_control_characters_are_named_escaped_with_their_line(case, tmp_path, spotctl):
    text, line, words = CONTROLS[case]
    refused(spotctl, write(tmp_path, text), line, *words)


def test_a_file_name_with_escapes_is_shown_escaped(tmp_path, spotctl):
    job = write(tmp_path, VALID + "bogus: 1\n", name="job\x1b[31m\nred.yaml")
    line = refused(spotctl, job, 6, "unknown key 'bogus'", source=printable(str(job)))
    assert "job\\x1b[31m\\nred.yaml:6: " in line
    valid = write(tmp_path, VALID, name="ok\x1b]0;title\x07.yaml")
    code, out, err = spotctl("validate", str(valid))
    assert (code, err) == (0, "")
    assert "ok\\x1b]0;title\\x07.yaml: valid" in out and "\x1b" not in out and "\x07" not in out


def test_printable_escapes_what_a_terminal_would_act_on():
    assert (
        printable("plain text, quotes ' \" and \\ and ünïcödé 名前 🙂")
        == "plain text, quotes ' \" and \\ and ünïcödé 名前 🙂"
    )
    assert printable("a\nb\rc\td") == "a\\nb\\rc\\td"
    assert printable("\x1b[31mred\x1b[0m\x07") == "\\x1b[31mred\\x1b[0m\\x07"
    assert printable("\x9b2J \x85 \u2028 \u2029") == "\\x9b2J \\x85 \\u2028 \\u2029"
    assert printable("\u202egnp.exe \u2066x\u2069 zero\u200bwidth \ufeff") == (
        "\\u202egnp.exe \\u2066x\\u2069 zero\\u200bwidth \\ufeff"
    )
    assert printable("\ud800") == "\\ud800"
    assert clip("x" * 61) == "x" * 60 + "... (61 characters)" and clip("short") == "short"


# -------------------------------------------------------------------------------- unreadable paths
def test_unreadable_paths_are_one_line_each(tmp_path, spotctl):
    (tmp_path / "loop1.yaml").symlink_to("loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to("loop1.yaml")
    refused(spotctl, tmp_path / "loop1.yaml", None, "cannot be read (Too many levels of symbolic links)")
    (tmp_path / "dangling.yaml").symlink_to("nowhere.yaml")
    refused(spotctl, tmp_path / "dangling.yaml", None, "no such file")
    refused(spotctl, tmp_path, None, "is a folder")
    refused(spotctl, "/dev/null", None, "is a character device, not a file")
    refused(spotctl, "/dev/zero", None, "is a character device, not a file")  # read, it would never end
    plain = write(tmp_path, VALID)
    refused(spotctl, plain / "job.yaml", None, "cannot be read (Not a directory)")
    refused(spotctl, tmp_path / ("x" * 300 + ".yaml"), None, "cannot be read (File name too long)")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "sock.yaml"))
        refused(spotctl, tmp_path / "sock.yaml", None, "is a socket, not a file")


def test_a_fifo_is_refused_without_opening_it(tmp_path, spotctl):
    fifo = tmp_path / "job.yaml"
    os.mkfifo(fifo)
    # In a child with a timeout: were the FIFO opened, the open would wait for a writer forever.
    answer = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert (answer.returncode, answer.stdout) == (2, "")
    assert answer.stderr.splitlines() == [
        f"{fifo}: is a named pipe (FIFO), not a file; give the path of a job .yaml file",
        f"error: {fifo} is not a valid job spec (1 problem)",
    ]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_a_file_without_permission(tmp_path, spotctl):
    job = write(tmp_path, VALID)
    job.chmod(0)
    refused(spotctl, job, None, "cannot be read (permission denied)")


# ------------------------------------------------------------------------------ encoding and size
ENCODINGS = {
    "latin-1 on line 3": (VALID.replace("./data", "./daté").encode("latin-1"), 5, ["byte 0xe9 at column 22"]),
    "UTF-16 with its BOM": (VALID.encode("utf-16"), 1, ["is UTF-16 text; save the job file as UTF-8"]),
    "UTF-32 with its BOM": (VALID.encode("utf-32"), 1, ["is UTF-32 text; save the job file as UTF-8"]),
    "a truncated character": ("name: démo\n".encode()[:8] + b"\n", 1, ["byte 0xc3 at column 8"]),
}


@pytest.mark.parametrize("case", ENCODINGS, ids=str)
def test_text_that_is_not_utf8_is_refused_with_its_line(case, tmp_path, spotctl):
    raw, line, words = ENCODINGS[case]
    refused(spotctl, write(tmp_path, raw), line, *words)


def test_a_utf8_bom_is_fine(tmp_path, spotctl):
    assert spotctl("validate", str(write(tmp_path, "\ufeff" + VALID)))[0] == 0


def test_files_over_the_size_limit_are_refused_before_parsing(tmp_path, spotctl):
    big = write(
        tmp_path, VALID + "extra:\n" + '  - "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"\n' * 200_000
    )  # 11 MB
    refused(spotctl, big, None, f"is too large for a job file ({big.stat().st_size} bytes; the limit is 256 KiB)")
    sparse = tmp_path / "sparse.yaml"
    with open(sparse, "wb") as out:
        out.truncate(1 << 40)  # a terabyte that takes no disk: refused by its size, never read
    refused(spotctl, sparse, None, f"({1 << 40} bytes; the limit is 256 KiB)")
    comments = write(tmp_path, VALID + ("# " + "c" * 1000 + "\n") * 300, name="comments.yaml")  # 300 KB of comment
    refused(spotctl, comments, None, "is too large for a job file")
    at_limit = write(tmp_path, VALID + "#" * (bounded_yaml.MAX_BYTES - len(VALID) - 1) + "\n", name="limit.yaml")
    assert spotctl("validate", str(at_limit))[0] == 0


def test_a_remote_file_is_read_only_up_to_the_limit(tmp_path, spotctl):
    import fsspec

    memory = fsspec.filesystem("memory")
    memory.pipe("/hostile/big.yaml", VALID.encode() + b"#" * (4 << 20))
    memory.pipe("/hostile/bomb.yaml", laughs().encode())
    try:
        refused(spotctl, "memory://hostile/big.yaml", None, f"(more than {bounded_yaml.MAX_BYTES} bytes;")
        refused(spotctl, "memory://hostile/bomb.yaml", 5, "aliases expanded")
        refused(spotctl, "memory://hostile/missing.yaml", None, "no such file")
        refused(spotctl, "nosuchscheme://bucket/job.yaml", None, "cannot be read (ValueError: Protocol not known")
    finally:
        memory.rm("/hostile", recursive=True)


# ------------------------------------------------------------------------------ tags and numbers
TAGS_AND_NUMBERS = {
    "python object": ('name: !!python/object/apply:os.system ["touch pwned"]\n', 1, ["the tag !!python/object/apply"]),
    "python name": ("name: demo\nstorage: !!python/name:os.system\n", 2, ["the tag !!python/name:os.system"]),
    "verbatim tag": ("name: !<tag:yaml.org,2002:python/object:os.system> x\n", 1, ["the tag !!python/object:os"]),
    "local tag": ("name: demo\nstorage: !env HOME\n", 2, ["the tag !env is not allowed in a job file"]),
    "a bool that is not": ("name: demo\nstorage: ./r\ntrain: !!bool maybe\n", 3, ["'maybe' is not a valid bool"]),
    "a date in year 0": ("name: demo\nstorage: 0000-01-01\n", 2, ["'0000-01-01' is not a valid timestamp"]),
    "100000 digits": ("name: demo\ntrain:\n  epochs: 1" + "0" * 100_000 + "\n", 3, ["of 100001 characters"]),
    "5000 hex digits": ("name: demo\ntrain:\n  epochs: 0x" + "f" * 2000 + "\n", 3, ["a number of 2002 characters"]),
    "base 60": ("name: demo\ntrain:\n  epochs: 1" + ":59" * 40 + "\n", 3, ["a number of 121 characters"]),
    "a float of 200 digits": ("name: demo\ntrain:\n  epochs: 1." + "5" * 200 + "\n", 3, ["a number of 202"]),
}


@pytest.mark.parametrize("case", TAGS_AND_NUMBERS, ids=str)
def test_tags_and_numbers_are_refused_with_their_line(case, tmp_path, spotctl):
    text, line, words = TAGS_AND_NUMBERS[case]
    refused(spotctl, write(tmp_path, text), line, *words)
    assert not (tmp_path / "pwned").exists()


def test_non_finite_and_huge_numbers_are_ordinary_bad_values(tmp_path, spotctl):
    job = write(tmp_path, VALID + "  optimizer: {lr: .inf, momentum: .nan}\n  epochs: 99999999999999999999\n")
    code, _, err = spotctl("validate", str(job))
    assert code == 2
    assert err.splitlines() == [
        f"{job}:6: train.optimizer.lr: must be at most 10, got inf (e.g. 0.01)",
        f"{job}:6: train.optimizer.momentum: must be less than 1, got nan",
        f"{job}:7: train.epochs: must be at most 10000, got 99999999999999999999 (e.g. 10)",
        f"error: {job} is not a valid job spec (3 problems)",
    ]


# ------------------------------------------------------------------- long keys, long values, keys
def test_long_and_odd_keys(tmp_path, spotctl):
    limit = f"the limit is {bounded_yaml.MAX_SCALAR_CHARS}"
    long_key = write(tmp_path, VALID + "? " + "k" * 3000 + "\n: 1\n", name="long_key.yaml")  # YAML's long-key form
    refused(spotctl, long_key, 6, f"a key or value of 3000 characters; {limit}")
    long_value = write(tmp_path, VALID.replace("demo", "d" * 5000), name="long_value.yaml")
    refused(spotctl, long_value, 1, f"a key or value of 5000 characters; {limit}")
    unknown = write(tmp_path, VALID + "x" * 1000 + ": 1\n", name="unknown.yaml")
    line = refused(spotctl, unknown, 6, "unknown key 'xxxxx", "... (1000 characters)")
    assert len(line) < 400  # clipped where it is quoted, in the path and in the message
    bracket = write(tmp_path, VALID + "  label_smooth[ing]: 0.1\n", name="bracket.yaml")
    refused(spotctl, bracket, 6, "train.label_smooth[ing]: unknown key 'label_smooth[ing]'; did you mean")
    listed = write(tmp_path, VALID + "? [a, b]\n: 1\n", name="list_key.yaml")
    refused(spotctl, listed, 6, "a key must be a name, not a list")
    mapped = write(tmp_path, VALID + "{a: 1}: 1\n", name="map_key.yaml")
    refused(spotctl, mapped, 6, "a key must be a name, not a mapping")
    comment = write(tmp_path, VALID + "# " + "c" * 200_000 + "\n", name="comment.yaml")
    assert spotctl("validate", str(comment))[0] == 0  # one very long line of comment is still text


def test_duplicate_keys_nested_and_merged(tmp_path, spotctl):
    nested = write(tmp_path, VALID + "  optimizer:\n    lr: 0.1\n    lr: 0.2\n")
    refused(spotctl, nested, 8, "train.optimizer.lr: duplicate key (first set on line 7); keep one of them")
    # A merge key sets defaults a mapping may override: not a duplicate.
    merged = write(tmp_path, VALID + "  optimizer:\n    <<: &o {lr: 0.1, name: sgd}\n    lr: 0.2\n", name="m.yaml")
    assert load_checked(merged)[0].train.optimizer.lr == 0.2


# -------------------------------------------------------------------------- the real CLI, as a child
CHILD_CASES = {
    "billion laughs": ("name: lol\n" + laughs(), "job.yaml:6: more than 10000 keys and values"),
    "deep nesting": ("a: " + "[" * 100_000 + "\n", "job.yaml:1: nested more than 32 levels deep"),
    "control character": ("name: \x1b]0;owned\x07\n", "job.yaml:1: control character \\x1b at column 7"),
}


@pytest.mark.parametrize("case", CHILD_CASES, ids=str)
def test_spotctl_validate_as_a_child_process(case, tmp_path):
    text, first = CHILD_CASES[case]
    write(tmp_path, text)
    answer = subprocess.run(
        [sys.executable, "-m", "orchestrator", "validate", "job.yaml"],
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    err = answer.stderr.decode()
    assert (answer.returncode, answer.stdout) == (2, b"")
    assert "Traceback" not in err and all(line.isprintable() for line in err.splitlines())
    assert err.splitlines()[0].startswith(first) and len(err.splitlines()) == 2


@pytest.mark.parametrize("command", ["launch", "doctor", "offers"])
def test_every_command_that_loads_a_job_file_answers_the_same(command, tmp_path, spotctl):
    bomb = write(tmp_path, "name: lol\n" + laughs(), name="bomb.yaml")
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop.name)
    control = write(tmp_path, VALID + '  "\\e[2J": 1\n', name="control.yaml")
    for job, first in (
        (bomb, f"{bomb}:6: more than {bounded_yaml.MAX_VALUES} keys and values, aliases expanded"),
        (loop, f"{loop}: cannot be read (Too many levels of symbolic links)"),
        (control, f"{control}:6: '\\x1b[2J' holds the control character \\x1b"),
    ):
        code, out, err = spotctl(command, str(job))
        assert (code, out) == (2, "")
        lines = err.splitlines()
        assert len(lines) == 2 and lines[0].startswith(first), lines
        assert lines[1] == f"error: {job} is not a valid job spec (1 problem)"
