# Each target creates its own virtualenv (.venv) on first use.  Two install stamps: the demo needs the
# package alone (.installed-pkg); the tests add the test tools and Ray (.installed), so `make test` after
# `make demo` installs just what is missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test conform bench clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	touch $@

$(VENV)/.installed-pkg: pyproject.toml $(VENV)/.created
	$(PY) -m pip install -q -e .
	touch $@

# tests/test_distributed.py runs the Ray engine: the ray extra is part of what the tests need
$(VENV)/.installed: pyproject.toml $(VENV)/.installed-pkg
	$(PY) -m pip install -q -e '.[test,ray]'
	touch $@

demo: $(VENV)/.installed-pkg
	$(VENV)/bin/pyiommufd demo

# The kernel's iommufd selftest runs on the emulator in the tests: its source comes from Debian.
test: $(VENV)/.installed
	sh src/pyiommufd/emulate/install-deps.sh
	$(PY) -m pytest -m "not conform"

# Real Linux 6.12 in QEMU vs the emulator: installs the Debian packages it needs (apt-get, once),
# builds the kernel once (cached under ~/.cache/pyiommufd/conform), boots each configuration once,
# prints the agreement table and fails on any unexplained disagreement; then the kernel's own iommufd
# selftest in a VM without an IOMMU (one boot, fails on a failing case); then the one boot test.
conform: $(VENV)/.installed
	sh src/pyiommufd/conform/install-deps.sh
	$(VENV)/bin/pyiommufd conform
	$(VENV)/bin/pyiommufd conform --selftest --differences-only
	PYIOMMUFD_CONFORM=1 $(PY) -m pytest -m conform

# How fast, beside SPIN and a naive search (needs: apt-get install spin).  BENCH_FLAGS=--quick: CI size.
bench: $(VENV)/.installed-pkg
	$(VENV)/bin/pyiommufd bench $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
