"""The README tells the truth: its commands exist, and its job.yaml reference matches the schema."""

from __future__ import annotations

import re

from orchestrator.spec_reference import README_END, README_START, markdown_reference
from testbed import REPO

README = (REPO / "README.md").read_text()


def test_reference_matches_the_schema():
    section = README.split(README_START, 1)[1].split(README_END, 1)[0]
    assert section.strip() == markdown_reference().strip(), "run `make reference` to update README.md"


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    first_block = re.search(r"```(?:bash|sh)\n(.*?)```", README, re.S).group(1).split("\n")
    commands = [line.split("#")[0].strip() for line in first_block if line.strip() and not line.startswith("#")]
    assert commands == ["make demo", "make test"]
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_example_the_readme_names_exists():
    for name in re.findall(r"examples/[\w.-]+\.yaml", README):
        assert (REPO / name).exists(), name


def test_the_readme_lists_every_setting_as_the_settings_module_defines_it():
    from trainer.job.settings import markdown_table

    listed = README.split("<!-- settings:start -->\n")[1].split("<!-- settings:end -->")[0]
    assert listed == markdown_table(), "run `make reference` to rewrite it"


def test_every_spotctl_variable_is_a_setting_and_only_the_settings_module_reads_them():
    import re

    from trainer.job.settings import VARIABLES

    defined = {v.name for v in VARIABLES}
    used, readers = set(), set()
    for path in [*REPO.glob("orchestrator/**/*.py"), *REPO.glob("trainer/**/*.py")]:
        text = path.read_text()
        used |= set(re.findall(r"SPOTCTL_[A-Z_]+", text))
        if re.search(r"(environ|getenv)\W+[\"']SPOTCTL_", text):
            readers.add(str(path.relative_to(REPO)))
    assert used <= defined, used - defined
    assert readers == set()  # they are read through Settings.from_env() / BootEnv.from_env()
