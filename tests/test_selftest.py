"""The yardstick: the kernel's own iommufd selftests (6.12.117) on the emulator.

Builds tools/testing/selftests/iommu/{iommufd,iommufd_fail_nth} from Debian's linux-source-6.12
(with the adaptation listed in docs/emulate.md), runs every case under
``pyiommufd emulate --profile linux-6.12`` and checks that each case in
tests/emulate/selftest-pass.txt passes (the list only grows: regenerate it with
``python -m pyiommufd.emulate.yardstick --pass-list``).  docs/selftest.md has the per-case table
beside real Linux 6.12."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pyiommufd.emulate import selftest, yardstick

PASS_LIST = Path(__file__).parent / "emulate" / "selftest-pass.txt"


@pytest.fixture(scope="module")
def results():
    if not selftest.DEBIAN_TARBALL.exists():
        pytest.skip("needs Debian's linux-source-6.12 (make test installs it as root: "
                    "sh src/pyiommufd/emulate/install-deps.sh)")
    return yardstick.run_emulator()["programs"]


def test_all_cases_ran(results):
    # 190 cases of iommufd.c (52 TEST_F bodies over 5 fixtures and their variants) and 7 of
    # iommufd_fail_nth.c in 6.12.117; the fault-injection ones run, none skips
    assert len(results["iommufd"]["cases"]) == 190
    assert len(results["iommufd_fail_nth"]["cases"]) == 7
    assert "skip" not in results["iommufd_fail_nth"]["cases"].values()


def test_pinned_cases_pass(results):
    pinned = [line.strip() for line in PASS_LIST.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert len(pinned) >= 190, "the pass list is not pinned"
    got = {case: res for prog in results.values() for case, res in prog["cases"].items()}
    failing = [name for name in pinned if got.get(name) != "pass"]
    assert not failing, f"{len(failing)} selftest case(s) that passed on the model no longer do: {failing[:20]}"


def test_every_real_pass_passes_or_is_explained(results):
    real = json.loads(yardstick.REAL.read_text())
    for name, prog in results.items():
        for case, res in real["programs"][name]["cases"].items():
            if res == "pass" and prog["cases"].get(case) != "pass":
                assert case in yardstick.EXCEPTIONS, f"{case} passes on real 6.12, not on the emulator, unexplained"
