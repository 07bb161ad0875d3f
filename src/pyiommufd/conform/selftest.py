"""The kernel's own iommufd selftest (tools/testing/selftests/iommu) on real Linux in QEMU.

SPEC.md 12: the yardstick ``pyiommufd emulate`` is measured by.  The binaries come from
``pyiommufd.emulate.selftest.build()`` (Debian's 6.12.117 copy with the smallest adaptation);
they are dynamically linked, so the initramfs gets them with their glibc libraries.  The VM has
no intel-iommu (the selftest's mock IOMMU only probes without one) and boots with
``hugepages=128`` (the MAP_HUGETLB tests); the kernel is the conformance kernel, whose fragment
has the options the selftest needs (HUGETLBFS, TRANSPARENT_HUGEPAGE, INTEL_IOMMU_SVM for
IOMMU_IOPF, FAULT_INJECTION_DEBUG_FS, FAILSLAB).

Host side: ``run_selftest()`` builds, boots and returns the per-case result; ``parse_tap()`` is
the TAP parser the emulator side reuses.  Guest side (``python3 -m pyiommufd.conform.selftest
/job.json``, stdlib only): run each program and print its exit status and raw output as JSON.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

PROGRAMS = ("iommufd", "iommufd_fail_nth")
GUEST_DIR = "/opt/selftest"          # where the binaries land in the guest
APPEND = "hugepages=128"             # 128 x 2 MiB for the MAP_HUGETLB tests
MEMORY = "1G"                        # the huge pages take 256 MiB of it
GUEST_TIMEOUT = 1200                 # seconds per program in the guest (TCG is slow)
RESULT_NAME = "selftest-real-{release}.json"

# "ok 12 iommufd_ioas.no_domain.unmap # SKIP reason" / "not ok 3 iommufd.cmd_length #  reason"
_RESULT = re.compile(r"^(ok|not ok) (\d+) (.*?)(?: #(?: (\w+))?(?: .*)?)?$")


def parse_tap(text: str) -> dict[str, str]:
    """Per test case of one kselftest-harness TAP stream: {"FIXTURE.VARIANT.TEST": "pass" |
    "fail" | "skip"} (no VARIANT part for a fixture without variants).

    Directives as kselftest.h's ksft_test_result_code() writes them: ``# SKIP`` is skip,
    ``# XFAIL`` (failed as expected) is pass, ``# XPASS`` (passed against expectation) is fail,
    ``not ok`` is fail whatever follows.  Diagnostic lines (``#`` first) and the plan are
    ignored; a case reported twice is an error, since it means two streams were mixed."""
    out: dict[str, str] = {}
    for line in text.replace("\r", "").split("\n"):
        m = _RESULT.match(line.rstrip())
        if not m:
            continue
        verdict, _, name, directive = m.groups()
        name = name.strip()
        directive = (directive or "").upper()
        if verdict == "not ok" or directive == "XPASS":
            status = "fail"
        elif directive == "SKIP":
            status = "skip"
        else:
            status = "pass"
        if name in out:
            raise ValueError(f"TAP: test case {name!r} reported twice")
        out[name] = status
    return out


def counts(cases: dict[str, str]) -> dict[str, int]:
    return {s: sum(1 for v in cases.values() if v == s) for s in ("pass", "fail", "skip")}


def planned(text: str) -> int | None:
    """The TAP plan's test count (``1..N``), or None when the program died before printing it."""
    m = re.search(r"^1\.\.(\d+)\s*$", text.replace("\r", ""), re.M)
    return int(m.group(1)) if m else None


# -- guest side ------------------------------------------------------------------------------------
def guest_main(argv: list[str]) -> int:
    with open(argv[1]) as f:
        job = json.load(f)
    print(json.dumps({"kind": "env", "kernel": os.uname().release,
                      "hugepages": _read("/proc/sys/vm/nr_hugepages"),
                      "thp": _read("/sys/kernel/mm/transparent_hugepage/enabled"),
                      "failslab": os.path.isdir("/sys/kernel/debug/failslab")}), flush=True)
    for prog in job["programs"]:
        t0 = time.monotonic()
        try:
            # cwd: the harness's own temporary files, if any, go to a writable place
            p = subprocess.run([f"{GUEST_DIR}/{prog}"], cwd="/tmp", capture_output=True, text=True,
                               errors="replace", timeout=job.get("timeout", GUEST_TIMEOUT))
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, stdout, stderr = None, _text(e.stdout), _text(e.stderr) + "\n[timeout]"
        print(json.dumps({"kind": "selftest", "program": prog, "rc": rc, "tap": stdout,
                          "stderr": stderr[-20000:], "seconds": round(time.monotonic() - t0, 1)}),
              flush=True)
    return 0


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _text(b) -> str:
    return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")


# -- host side -------------------------------------------------------------------------------------
def run_selftest(*, cache: Path | str | None = None, kernel: Path | None = None,
                 source: Path | str | None = None,
                 binaries: dict[str, Path] | None = None, programs: tuple[str, ...] = PROGRAMS,
                 timeout: float = 1800.0, log=None) -> dict:
    """Build (or find) the kernel and the selftest binaries, boot once without an IOMMU, run
    *programs* in the guest and return {"kernel": release, "programs": {prog: {"cases": {...},
    "counts": {...}, "planned": N, "rc": n, "seconds": s}}, "seconds": s}."""
    from . import qemu
    from .build import build, build_initramfs
    log = log or (lambda msg: None)
    t0 = time.monotonic()
    if binaries is None:
        from ..emulate.selftest import build as build_selftest
        binaries = build_selftest()
    unknown = [p for p in programs if p not in binaries]
    if unknown:
        raise ValueError(f"unknown selftest program(s) {unknown}; known: {', '.join(binaries)}")
    kernel = kernel or build(cache, source).image
    payload = Path(__file__).resolve().parents[1]
    job = {"module": "pyiommufd.conform.selftest", "programs": list(programs),
           "timeout": int(timeout) - 60}
    initramfs = build_initramfs(cache, payload, json.dumps(job),
                                extra_files={f"{GUEST_DIR}/{p}": Path(binaries[p]) for p in programs})
    log(f"selftest: booting {kernel} without an IOMMU, {APPEND}")
    r = qemu.run(kernel, initramfs, snoop_control=None, n_devices=0, behind_bridge=False,
                 timeout=timeout, append=APPEND, memory=MEMORY)
    env, progs = None, {}
    for line in r.output.splitlines():
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if obj.get("kind") == "env":
            env = obj
        elif obj.get("kind") == "selftest":
            cases = parse_tap(obj["tap"])
            progs[obj["program"]] = {"cases": cases, "counts": counts(cases),
                                     "planned": planned(obj["tap"]), "rc": obj["rc"],
                                     "seconds": obj["seconds"], "tap": obj["tap"],
                                     "stderr_tail": obj["stderr"][-2000:]}
    missing = [p for p in programs if p not in progs]
    if missing:
        raise qemu.BootError(f"the guest reported nothing for {missing}; agent stderr:\n{r.stderr}",
                             r.console)
    return {"kernel": (env or {}).get("kernel"), "env": env, "boot": {"memory": MEMORY, "append": APPEND,
            "iommu": None, "seconds": round(r.seconds, 1)}, "programs": progs,
            "seconds": round(time.monotonic() - t0, 1)}


def ok(res: dict) -> bool:
    """Every planned case reported, none failed (skips are reported, not failures)."""
    return all(p["counts"]["fail"] == 0 and p["planned"] is not None and len(p["cases"]) == p["planned"]
               for p in res["programs"].values())


def public_json(res: dict) -> dict:
    """The result without the raw TAP (the committed docs/ copy)."""
    return {**res, "programs": {k: {kk: vv for kk, vv in v.items() if kk not in ("tap", "stderr_tail")}
                                for k, v in res["programs"].items()}}


def text_report(res: dict, *, all_rows: bool = False) -> str:
    lines = [f"kernel's iommufd selftest on real Linux {res.get('kernel')} (QEMU, no IOMMU, {APPEND})"]
    for prog, p in res["programs"].items():
        c = p["counts"]
        lines.append(f"{prog:<18} planned {p['planned']}  pass {c['pass']}  fail {c['fail']}  "
                     f"skip {c['skip']}  exit {p['rc']}  {p['seconds']} s")
        for name, st in p["cases"].items():
            if all_rows or st != "pass":
                lines.append(f"  {st:<5} {name}")
    return "\n".join(lines)


def write_result(res: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    sys.exit(guest_main(sys.argv))
