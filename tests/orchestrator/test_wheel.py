"""The wheel every instance installs holds the whole spotctl: every module and data file of both
planes (a subpackage missing its __init__.py, or data missing from package-data, would be left out)."""

from __future__ import annotations

import zipfile

from testbed import REPO


def test_the_wheel_ships_every_module_and_data_file(wheel):
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {
        str(p.relative_to(REPO))
        for folder in ("orchestrator", "trainer")
        for p in (REPO / folder).rglob("*")
        if p.is_file() and p.suffix in (".py", ".json", ".yaml") and "__pycache__" not in p.parts
    }
    assert wanted - shipped == set()
    assert not any(name.startswith(("tests/", "testbed/", "bench/")) for name in shipped)
