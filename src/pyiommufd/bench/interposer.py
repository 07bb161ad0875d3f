"""The cost of an emulated ioctl from C through the interposer (``pyiommufd emulate``), beside
the same ioctls through the in-process Python client path, in the same run.

The C program (ioctl_loop.c) times IOMMU_IOAS_ALLOC + IOMMU_DESTROY pairs itself (wall clock:
the cost includes the two context switches per call between the program and the server);
the in-process figure is the same pair through EmulatedTransport, wall clock too."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .. import uapi
from ..emulate.build import cache_dir
from ..emulate.build import interposer as build_interposer

SOURCE = Path(__file__).with_name("ioctl_loop.c")
INCLUDE = Path(__file__).resolve().parent.parent / "emulate" / "include"


def _program() -> Path:
    exe = cache_dir() / "bench-ioctl-loop"
    if not exe.exists() or exe.stat().st_mtime < SOURCE.stat().st_mtime:
        build_interposer()   # makes the cache directory; says what to install when there is no gcc
        subprocess.run(["gcc", "-O2", f"-I{INCLUDE}", "-o", str(exe), str(SOURCE)], check=True)
    return exe


def c_through_interposer(n: int, profile: str) -> float:
    """Seconds per ioctl from C under ``pyiommufd emulate``."""
    r = subprocess.run([sys.executable, "-m", "pyiommufd", "emulate", "--profile", profile, "--",
                        str(_program()), str(n)], capture_output=True, text=True, timeout=600)
    if r.returncode:
        raise RuntimeError(f"the emulate benchmark program failed: {r.stdout}{r.stderr}")
    count, seconds = r.stdout.split()
    return float(seconds) / int(count)


def in_process(n: int, profile: str) -> float:
    """Seconds per ioctl for the same pair through the client's EmulatedTransport."""
    from ..client import emulated
    from ..system import System, Unit
    t = emulated(System(iommu="mock", units=(Unit("mock0"),)), profile).transport
    fd = t.open("/dev/iommu")
    alloc, destroy = uapi.iommu_ioas_alloc(size=12), uapi.iommu_destroy(size=8)
    t0 = time.perf_counter()
    for _ in range(n // 2):
        t.ioctl(fd, uapi.IOMMU_IOAS_ALLOC, alloc)
        destroy.id = alloc.out_ioas_id
        t.ioctl(fd, uapi.IOMMU_DESTROY, destroy)
    return (time.perf_counter() - t0) / n


def compare(n: int, profile: str, repeats: int = 3) -> dict:
    c = min(c_through_interposer(n, profile) for _ in range(repeats))
    py = min(in_process(n, profile) for _ in range(repeats))
    return {"ioctls": n, "c_us_per_ioctl": round(c * 1e6, 2), "c_ioctls_per_s": round(1 / c),
            "in_process_us_per_ioctl": round(py * 1e6, 2), "ratio_c_vs_in_process": round(c / py, 2),
            "loadavg": os.getloadavg()[0]}
