"""``pyiommufd emulate``: unmodified programs on the emulated kernel.

The command is run with the interposer (preload.c) in LD_PRELOAD and $PYIOMMUFD_SOCKET naming
a socket in a fresh directory only this user can enter; /dev/iommu and /dev/vfio/... are served
by ``server.Server`` running one ``kernel.host.Host`` of the chosen profile.  Everything else
the program does is real.  See docs/emulate.md.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

from ..errors import ScenarioError
from ..kernel.host import Host
from ..system import System
from .build import interposer
from .server import Server


def device_paths(system: System, profile) -> tuple[dict[str, str], list[str]]:
    """Client path -> host path, and the mapping lines printed on stderr.

    6.6+: /dev/vfio/devices/vfioN, N = the device's position in [[devices]].  6.2-6.5 (no
    cdevs): /dev/vfio/N for the N-th group in order of first appearance."""
    paths, lines = {}, []
    if profile.vfio_cdev:
        for d in system.devices:
            lines.append(f"vfio{d.cdev} = {d.name}")
    else:
        for n, g in enumerate(system.groups):
            paths[f"/dev/vfio/{n}"] = f"/dev/vfio/{g}"
            members = [d.name for d in system.devices if d.group == g]
            lines.append(f"/dev/vfio/{n} = group {g}: {', '.join(members)}")
    return paths, lines


def run(cmd: list[str], system: System, profile, *, trace: str | None = None, record: str | None = None,
        system_path: str | None = None, quiet: bool = False) -> int:
    """Run ``cmd`` on the emulated kernel; return its exit status (128+N for signal N)."""
    if not cmd:
        raise ScenarioError("emulate: no command given (usage: pyiommufd emulate [options] -- CMD [ARGS...])")
    if shutil.which(cmd[0]) is None and not os.path.exists(cmd[0]):
        raise ScenarioError(f"emulate: command not found: {cmd[0]}")
    lib = interposer()
    host = Host(system, profile)
    # Programs run on a kernel like Debian's: CONFIG_TRANSPARENT_HUGEPAGE (iopt_alloc_iova aligns
    # automatic IOVAs up to 2 MiB), as the real 6.12 runs of the selftest had (SPEC.md section 12).
    host.thp = True
    paths, lines = device_paths(system, profile)
    if not quiet:
        for line in lines:
            print(line, file=sys.stderr)
    sockdir = tempfile.mkdtemp(prefix="pyiommufd-emulate-")   # mode 0700: only this user enters
    trace_file = open(trace, "w") if trace else None
    recorder = None
    if record:
        from .record import Recorder
        recorder = Recorder(system, profile, system_path)

    def log(rec: dict) -> None:
        # every record has the contract's keys (DESIGN.md): ioctl/in/out are null for open/close/read/write
        out = {"pid": None, "fd_kind": None, "call": None, "ioctl": None, "in": None, "out": None,
               "result": None, "errno": None, "us": None, **rec}
        if "in" in out or "out" in out:
            from .trace import decode
            out["in"] = decode(host, rec.get("request"), rec.get("in"))
            out["out"] = decode(host, rec.get("request"), rec.get("out"))
        out.pop("request", None)
        out.pop("host_fd", None)
        trace_file.write(json.dumps(out) + "\n")

    server = Server(host, sockdir, trace=log if trace_file else None, recorder=recorder, paths=paths)
    env = dict(os.environ)
    env["LD_PRELOAD"] = f"{lib}:{env['LD_PRELOAD']}" if env.get("LD_PRELOAD") else str(lib)
    env["PYIOMMUFD_SOCKET"] = server.path
    old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)   # ^C is the program's to handle
    try:
        try:
            proc = subprocess.Popen(cmd, env=env)
        except OSError as e:
            raise ScenarioError(f"emulate: cannot run {cmd[0]}: {e.strerror}") from None
        server.serve(proc.pid)
        rc = proc.wait()
    finally:
        signal.signal(signal.SIGINT, old_int)
        server.close()
        shutil.rmtree(sockdir, ignore_errors=True)
        if trace_file:
            trace_file.close()
    if recorder is not None:
        with open(record, "w") as f:
            f.write(recorder.toml())
    return 128 - rc if rc < 0 else rc


__all__ = ["run", "device_paths"]
