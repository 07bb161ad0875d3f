"""The yardstick: the kernel's own iommufd selftest (6.12.117) on the emulator.

Builds tools/testing/selftests/iommu/iommufd from Debian's linux-source-6.12 (with the listed
adaptation), runs every case under ``pyiommufd emulate --profile linux-6.12`` and checks that
each case in tests/emulate/selftest-pass.txt passes (the cases that pass on the model today;
the list only grows).  docs/selftest.md has the per-case table beside real Linux 6.12."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from pyiommufd.emulate import selftest

PASS_LIST = Path(__file__).parent / "emulate" / "selftest-pass.txt"
HUGEPAGES = Path("/proc/sys/vm/nr_hugepages")


@contextmanager
def hugepages(n: int):
    """The selftest maps MAP_HUGETLB buffers: reserve huge pages when we may (root), as the
    real run boots with hugepages=128; restore the old value after."""
    old = None
    try:
        old = int(HUGEPAGES.read_text())
        if old < n and os.access(HUGEPAGES, os.W_OK):
            HUGEPAGES.write_text(str(n))
    except OSError:
        old = None
    try:
        yield
    finally:
        if old is not None and os.access(HUGEPAGES, os.W_OK):
            HUGEPAGES.write_text(str(old))


@pytest.fixture(scope="module")
def results():
    if not selftest.DEBIAN_TARBALL.exists():
        pytest.skip("needs Debian's linux-source-6.12 (make test installs it as root: "
                    "sh src/pyiommufd/emulate/install-deps.sh)")
    binary = selftest.build()["iommufd"]
    with hugepages(128):
        res, out = selftest.run_on_emulator(binary)
    assert res, f"no TAP results from the selftest:\n{out[-3000:]}"
    return res


def test_all_cases_ran(results):
    assert len(results) == 190      # 52 TEST_F bodies over 5 fixtures x their variants (6.12.117)


def test_pinned_cases_pass(results):
    pinned = [line.strip() for line in PASS_LIST.read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    failing = [name for name in pinned if results.get(name) != "pass"]
    assert not failing, f"{len(failing)} selftest case(s) that passed on the model no longer do: {failing[:20]}"


def test_parse_tap():
    text = "ok 1 a.b\nnot ok 2 a.c\nok 3 x.y # SKIP no hugepages\n# ok 4 comment\n"
    assert selftest.parse_tap(text) == {"a.b": "pass", "a.c": "fail", "x.y": "skip"}
