"""Build the interposer (preload.c) with the system C compiler on first use, cached per user
under ~/.cache/pyiommufd/emulate/<hash of the source and compiler>/ (or $PYIOMMUFD_CACHE)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import EnvironmentMissing

SOURCE = Path(__file__).with_name("preload.c")
LIBNAME = "libpyiommufd-preload.so"
CFLAGS = ["-shared", "-fPIC", "-O2", "-Wall"]


def cache_dir() -> Path:
    base = os.environ.get("PYIOMMUFD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "pyiommufd")
    return Path(base) / "emulate"


def interposer(cc: str | None = None) -> Path:
    """The path of the built interposer; EnvironmentMissing (exit 3) saying what to install."""
    cc = cc or os.environ.get("CC", "cc")
    exe = shutil.which(cc) or shutil.which("gcc")
    if exe is None:
        raise EnvironmentMissing(f"no C compiler ({cc}) to build the emulate interposer: "
                                 "apt-get install gcc libc6-dev (or set CC)")
    src = SOURCE.read_bytes()
    key = hashlib.sha256(src + exe.encode() + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / key / LIBNAME
    if out.exists():
        return out
    cache_dir().mkdir(parents=True, exist_ok=True, mode=0o700)   # per user: nobody else writes here
    out.parent.mkdir(exist_ok=True, mode=0o700)
    tmp = out.with_suffix(f".tmp{os.getpid()}")
    r = subprocess.run([exe, *CFLAGS, "-o", str(tmp), str(SOURCE), "-ldl"], capture_output=True, text=True)
    if r.returncode:
        raise EnvironmentMissing(f"building the emulate interposer with {exe} failed "
                                 f"(need gcc and libc6-dev):\n{r.stderr[-2000:]}")
    tmp.rename(out)
    return out
