"""The floor plan, held by tests: the orchestrator may import only the trainer's contract
(`trainer.job`); the contract imports nothing else of spotctl and no torch; the orchestrator's import
chain stays short; and no object path of a job is spelled outside trainer/job/layout.py."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from testbed import REPO
from trainer.job import layout

MAX_PACKAGE_DEPTH = 6  # __main__ -> cli -> jobs -> aws -> errors today: 5
# __main__ -> cli -> jobs.watch -> jobs.step (the decision step the controller runs too) -> jobs.recover ->
# jobs.launch -> aws.ec2 -> aws.clients -> errors
MAX_MODULE_DEPTH = 9


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def imports(path: Path, runtime_only: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every import in the file; `runtime_only`: module level, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    if runtime_only:
        nodes = []
        for node in tree.body:
            if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
                continue
            nodes += (
                [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                if isinstance(node, (ast.If, ast.Try))
                else [node]
            )
    else:
        nodes = list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [
                (node.lineno, f"{node.module}.{alias.name}") for alias in node.names
            ]
    return found


def test_the_orchestrator_imports_only_the_contract_of_the_trainer():
    wrong = [
        f"{path.relative_to(REPO)}:{line}: {name}"
        for path in sources("orchestrator")
        for line, name in imports(path)
        if name.split(".")[0] == "trainer" and not (name + ".").startswith("trainer.job.")
    ]
    assert wrong == [], "the orchestrator may import only trainer.job"


def test_the_contract_imports_nothing_else_of_spotctl_and_no_torch():
    wrong = []
    for path in sources("trainer/job"):
        for line, name in imports(path, runtime_only=True):
            top = name.split(".")[0]
            if top in ("orchestrator", "torch", "torchvision") or (
                top == "trainer" and not (name + ".").startswith("trainer.job.")
            ):
                wrong.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert wrong == []


@cache
def graph(collapse: bool) -> dict[str, set[str]]:
    """The orchestrator's module-level import graph; `collapse`: each subpackage (cli, jobs, aws, local) is
    one node. The CLI always is one: its commands are leaves over the core (one module per command)."""
    modules = {module_name(path): path for path in sources("orchestrator")}

    def node(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if collapse or parts[:2] == ["orchestrator", "cli"] else name

    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        for _, target in imports(path, runtime_only=True):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != "orchestrator" and node(target) != node(name):
                edges.setdefault(node(name), set()).add(node(target))
    return edges


def longest_chain(edges: dict[str, set[str]]) -> list[str]:
    @cache
    def chain(start: str, seen: frozenset = frozenset()) -> tuple[str, ...]:
        assert start not in seen, f"import cycle through {start}"
        return (start,) + max((chain(t, seen | {start}) for t in edges.get(start, ())), key=len, default=())

    return list(max((chain(n) for n in edges), key=len))


# Who may import whom inside the orchestrator: the CLI sits on top; sweeps drive jobs; jobs use AWS; the
# local cloud knows EC2, not jobs; AWS knows neither.
MAY_NOT = {
    "orchestrator.sweeps": {"orchestrator.cli", "orchestrator.local"},
    "orchestrator.jobs": {"orchestrator.cli", "orchestrator.local", "orchestrator.sweeps"},
    "orchestrator.aws": {"orchestrator.cli", "orchestrator.jobs", "orchestrator.local", "orchestrator.sweeps"},
    "orchestrator.local": {"orchestrator.cli", "orchestrator.jobs", "orchestrator.sweeps"},
    "orchestrator.errors": {
        "orchestrator.cli",
        "orchestrator.jobs",
        "orchestrator.aws",
        "orchestrator.local",
        "orchestrator.sweeps",
    },
}


def test_the_orchestrators_packages_import_downwards_only():
    edges = graph(collapse=True)
    wrong = {
        (package, target) for package, forbidden in MAY_NOT.items() for target in edges.get(package, set()) & forbidden
    }
    assert wrong == set()


@pytest.mark.parametrize(
    ("collapse", "limit"), [(True, MAX_PACKAGE_DEPTH), (False, MAX_MODULE_DEPTH)], ids=["packages", "modules"]
)
def test_the_import_chain_stays_short(collapse, limit):
    chain = longest_chain(graph(collapse))
    assert len(chain) <= limit, " -> ".join(chain)


PATHS = {
    value
    for name, value in vars(layout).items()
    if name.isupper() and isinstance(value, str) and "/" in value or value in (layout.RECORD, layout.JOB_FILE)
}
PATH_STARTS = ("jobs/", "status/", "control/", "logs/attempt-", "metrics/a", "wheels/")


def test_no_object_path_is_spelled_outside_the_layout():
    spelled = []
    for path in sources("orchestrator") + sources("trainer"):
        if path == REPO / "trainer/job/layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            text = node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None
            if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                text = node.values[0].value
                if text.startswith(PATH_STARTS):
                    spelled.append(f"{path.relative_to(REPO)}:{node.lineno}: f{text!r}...")
                continue
            if text in PATHS:
                spelled.append(f"{path.relative_to(REPO)}:{node.lineno}: {text!r}")
    assert spelled == []
