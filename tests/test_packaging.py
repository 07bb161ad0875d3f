"""What a fresh clone's `make demo` / `make test` install (issue 15): the demo the package alone, the tests
the test tools and Ray; the license as an SPDX string, so setuptools prints no deprecation warning."""
import shutil
import subprocess
import tomllib

import pytest
from conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_is_an_spdx_string_and_setuptools_understands_it():
    assert PYPROJECT["project"]["license"] == "MIT"          # a table is deprecated (setuptools >= 77 warns)
    assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]   # 77: the first to take the string


def dry_run(target: str, *done: str) -> str:
    """The commands `make TARGET` would run in a tree where the stamps ``done`` exist (make -n)."""
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    tmp = ROOT / ".pytest_cache" / "makefile-dry-run"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "venv").mkdir(parents=True)
    shutil.copy(ROOT / "Makefile", tmp)
    shutil.copy(ROOT / "pyproject.toml", tmp)
    for stamp in done:
        (tmp / "venv" / stamp).touch()
    r = subprocess.run(["make", "-n", target, "VENV=venv"], cwd=tmp, capture_output=True, text=True, check=True)
    return r.stdout


def test_demo_installs_the_package_alone():
    cmds = dry_run("demo")
    assert "pip install -q -e ." in cmds
    assert "[test" not in cmds and "ray" not in cmds
    assert "pyiommufd demo" in cmds


def test_test_installs_what_tests_need_after_a_demo():
    cmds = dry_run("test", ".created", ".installed-pkg")        # `make demo` ran before
    assert "-m venv" not in cmds and "pip install -q -e '.[test,ray]'" in cmds
    assert "pytest" in cmds
    assert "pip install" not in dry_run("test", ".created", ".installed-pkg", ".installed")
