"""The TAP parser of the kernel's iommufd selftest and the pieces of its VM run that need no VM."""
import json
import subprocess
import sys

import pytest

from pyiommufd.conform import build, qemu
from pyiommufd.conform.selftest import counts, ok, parse_tap, planned, text_report

# The shapes kselftest.h / kselftest_harness.h (6.12) print, with the diagnostics in between.
TAP = """TAP version 13
1..6
# Starting 6 tests from 3 test cases.
#  RUN           iommufd.simple_close ...
#            OK  iommufd.simple_close
ok 1 iommufd.simple_close
#  RUN           iommufd_ioas.no_domain.unmap_fully_contained_areas ...
# iommufd.c:123:unmap_fully_contained_areas:Expected 0 (0) == ret (22)
#            FAIL  iommufd_ioas.no_domain.unmap_fully_contained_areas
not ok 2 iommufd_ioas.no_domain.unmap_fully_contained_areas
ok 3 iommufd_ioas.mock_domain_hugepage.area_auto_iova # SKIP no huge pages
not ok 4 iommufd_mock_domain.one_domain.user_copy #  some reason
ok 5 vfio_compat_mock_domain.Default.simple_close # XFAIL known
ok 6 vfio_compat_mock_domain.Default.huge_map # XPASS surprise
# FAILED: 3 / 6 tests passed.
# Totals: pass:1 fail:2 xfail:1 xpass:1 skip:1 error:0
"""


def test_parse_tap_every_verdict_and_directive():
    cases = parse_tap(TAP)
    assert cases == {
        "iommufd.simple_close": "pass",
        "iommufd_ioas.no_domain.unmap_fully_contained_areas": "fail",
        "iommufd_ioas.mock_domain_hugepage.area_auto_iova": "skip",
        "iommufd_mock_domain.one_domain.user_copy": "fail",
        "vfio_compat_mock_domain.Default.simple_close": "pass",      # failed as expected
        "vfio_compat_mock_domain.Default.huge_map": "fail",          # passed against expectation
    }
    assert counts(cases) == {"pass": 2, "fail": 3, "skip": 1}
    assert planned(TAP) == 6


def test_parse_tap_serial_line_endings_and_no_plan():
    text = "ok 1 a.b\r\nnot ok 2 c.d\r\n# ok 3 not.a.result\r\n"
    assert parse_tap(text) == {"a.b": "pass", "c.d": "fail"}
    assert planned(text) is None


def test_parse_tap_rejects_mixed_streams():
    with pytest.raises(ValueError, match="reported twice"):
        parse_tap("ok 1 a.b\nok 1 a.b\n")


def _res(cases, plan):
    return {"kernel": "6.12.117", "programs": {"iommufd": {"cases": cases, "counts": counts(cases),
            "planned": plan, "rc": 0, "seconds": 1.0}}}


def test_ok_needs_every_planned_case_and_no_failure():
    assert ok(_res({"a.b": "pass", "a.c": "skip"}, 2))
    assert not ok(_res({"a.b": "pass"}, 2))                 # the program died half-way
    assert not ok(_res({"a.b": "pass", "a.c": "fail"}, 2))
    assert not ok(_res({"a.b": "pass"}, None))               # no plan: did not start
    assert "skip  a.c" in text_report(_res({"a.b": "pass", "a.c": "skip"}, 2))


def test_qemu_command_append_and_memory():
    cmd = qemu.qemu_command("bz", "rd", snoop_control=None, n_devices=0, behind_bridge=False,
                            memory="1G", append="hugepages=128")
    assert cmd[cmd.index("-append") + 1].endswith("no_timer_check hugepages=128")
    assert cmd[cmd.index("-m") + 1] == "1G"
    assert not any("intel-iommu" in a for a in cmd)


def test_guest_main_runs_programs_and_reports_raw_tap(tmp_path, monkeypatch):
    from pyiommufd.conform import selftest
    prog = tmp_path / "fake"
    prog.write_text("#!/bin/sh\necho 'TAP version 13'\necho 1..1\necho 'ok 1 f.t'\necho listing >&2\nexit 0\n")
    prog.chmod(0o755)
    monkeypatch.setattr(selftest, "GUEST_DIR", str(tmp_path))
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"programs": ["fake"]}))
    proc = subprocess.run([sys.executable, "-c", "import sys; from pyiommufd.conform import selftest as s; "
                           f"s.GUEST_DIR = {str(tmp_path)!r}; sys.exit(s.guest_main(sys.argv))", str(job)],
                          capture_output=True, text=True, check=True)
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert lines[0]["kind"] == "env"
    assert lines[1]["program"] == "fake" and lines[1]["rc"] == 0
    assert parse_tap(lines[1]["tap"]) == {"f.t": "pass"} and "listing" in lines[1]["stderr"]


def test_initramfs_extra_files_bring_their_libraries(tmp_path):
    if not build.GUEST_PYTHON.is_file() or not build.shutil.which("busybox"):
        pytest.skip("needs Debian's python3.11 and busybox")
    exe = tmp_path / "prog"
    exe.write_bytes(open("/bin/true", "rb").read())
    exe.chmod(0o755)
    payload = tmp_path / "pyiommufd"
    payload.mkdir()
    (payload / "__init__.py").write_text("")
    job = json.dumps({"module": "json"})
    a = build.build_initramfs(tmp_path / "c", payload, job, extra_files={"/opt/x/prog": exe})
    data = a.read_bytes()
    assert b"opt/x/prog\0" in data and b"libc.so.6\0" in data
    b = build.build_initramfs(tmp_path / "c", payload, job)
    assert a != b                                     # the extra file is part of the key
    with pytest.raises(build.BuildError, match="absolute"):
        build.build_initramfs(tmp_path / "c", payload, job, extra_files={"rel/prog": exe})
    with pytest.raises(build.BuildError, match="does not exist"):
        build.build_initramfs(tmp_path / "c", payload, job, extra_files={"/p": tmp_path / "nope"})


def test_cli_selftest_and_kernel_source_usage_errors(tmp_path):
    from test_cli import cli
    if not build.GUEST_PYTHON.is_file() or not build.shutil.which("busybox") or \
            not build.shutil.which("qemu-system-x86_64") or not build.DEFAULT_TARBALL.is_file():
        pytest.skip("needs the conformance packages (install-deps.sh)")
    r = cli("conform", "--selftest", "scenarios/thread/noncc-first.toml")
    assert r.returncode == 2 and "runs the kernel's selftest programs, not scenarios" in r.stderr
    r = cli("conform", "--kernel-source", str(tmp_path / "nope"))
    assert r.returncode == 2 and "no such file or directory" in r.stderr
    r = cli("conform", "--kernel-source", str(tmp_path))
    assert r.returncode == 2 and "not a kernel source tree" in r.stderr
