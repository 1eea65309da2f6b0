# The two commands a new user runs (see README.md); each sets up .venv from constraints.txt first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Test processes (pytest-xdist), each given whole files, longest first (tests/conftest.py). On CI's
# 2 cores two finish the suite in about 2/3 of one's time (it is mostly CPU-bound: a trainer
# subprocess imports torch each time); 1 runs it in one process.
TEST_WORKERS ?= 2

.PHONY: demo readme-demo test reference constraints clean

demo: $(STAMP)  ## the main job: the quickstart on the local cloud (launch, spot interruption, recovery, cost); transcript in runs/demo.txt
	bash scripts/demo.sh

readme-demo:  ## copy the last `make demo` transcript's launch step (launch, no watch; the recovered job's status) into README.md's quickstart
	$(PYTHON) scripts/update_readme_demo.py

test: $(STAMP)  ## lint and format checks, then the whole test suite
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q $(if $(filter 1,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("spotctl needs Python >= 3.10, found " + sys.version.split()[0]) if sys.version_info < (3, 10) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt -e '.[trainer,local,dev]'
	touch $(STAMP)

reference: $(STAMP)  ## rewrite the job.yaml reference and the settings table in README.md from their sources
	$(PY) scripts/update_readme_reference.py

constraints:  ## re-resolve the tested set into constraints.txt (then run `make test`)
	rm -rf /tmp/spotctl-constraints && $(PYTHON) -m venv /tmp/spotctl-constraints
	/tmp/spotctl-constraints/bin/pip install --quiet 'torch==2.14.1' 'torchvision==0.29.1' -e '.[trainer,dev]'
	/tmp/spotctl-constraints/bin/pip freeze --exclude-editable | grep -v '^spotctl' > constraints.txt.new
	@echo "review constraints.txt.new (keep the header comment), then move it over constraints.txt"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
