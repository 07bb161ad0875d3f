"""pyiommufd emulate: real programs (C, sh) on the emulated kernel through the interposer."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pyiommufd.emulate import build, protocol as P
from pyiommufd.emulate.server import Server
from pyiommufd.kernel.host import Host
from pyiommufd.profiles import get_profile
from pyiommufd.system import System, Unit
from pyiommufd import uapi

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "src" / "pyiommufd" / "emulate" / "include"
EXAMPLES = ROOT / "examples"
CLI = [sys.executable, "-m", "pyiommufd"]


def emulate(*args, **kw):
    return subprocess.run([*CLI, "emulate", *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture(scope="module")
def cc(tmp_path_factory):
    """Compile a C file against the shipped 6.12 uapi headers; returns the binary's path."""
    out = tmp_path_factory.mktemp("bin")
    cflags = emulate("--cflags").stdout.split()     # what docs/emulate.md tells users to do
    assert cflags == [f"-I{INCLUDE}"]

    def compile_(src: Path) -> str:
        exe = out / src.stem
        subprocess.run(["gcc", "-Wall", "-Werror", *cflags, "-o", str(exe), str(src)], check=True)
        return str(exe)
    return compile_


# -- the command itself ----------------------------------------------------------------------------
def test_untouched_programs_behave_as_without_emulate():
    assert emulate("--", "true").returncode == 0
    assert emulate("--", "sh", "-c", "exit 7").returncode == 7
    r = emulate("--", "sh", "-c", "echo out; echo err >&2; ls / >/dev/null")
    assert (r.returncode, r.stdout, r.stderr) == (0, "out\n", "err\n")


def test_signal_death_is_128_plus_n():
    assert emulate("--", "sh", "-c", "kill -TERM $$").returncode == 128 + signal.SIGTERM
    assert emulate("--", "sh", "-c", "kill -KILL $$").returncode == 128 + signal.SIGKILL


@pytest.mark.parametrize("args, message", [
    ([], "needs a command"),
    (["--", "/nonexistent/prog"], "command not found"),
    (["--system", "/nonexistent.toml", "--", "true"], "no such file"),
    (["--profile", "linux-9.9", "--", "true"], "linux-9.9"),
    (["--profile", "linux-6.12", "--kernel", "6.2", "--", "true"], "not allowed with"),
])
def test_usage_errors_exit_2(args, message):
    r = emulate(*args)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bad_system_file_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[system]\niommu = "intel"\n[[devices]]\nname = "x"\nunit = "nope"\n')
    r = emulate("--system", str(bad), "--", "true")
    assert r.returncode == 2 and "nope" in r.stderr and "Traceback" not in r.stderr


def test_interposer_cannot_be_built_exit_3(tmp_path):
    env = dict(os.environ, PYIOMMUFD_CACHE=str(tmp_path), CC="no-such-compiler", PATH="/nonexistent")
    r = subprocess.run([sys.executable, "-m", "pyiommufd", "emulate", "--", "/bin/true"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "apt-get install gcc" in r.stderr


def test_socket_directory_only_the_user_can_enter():
    r = emulate("--", "sh", "-c", 'stat -c "%a %u" "$(dirname "$PYIOMMUFD_SOCKET")"')
    assert r.stdout.split() == ["700", str(os.getuid())]


def test_device_mapping_printed_on_stderr():
    r = emulate("--system", str(EXAMPLES / "two-devices.toml"), "--", "true")
    assert r.stderr.splitlines() == ["vfio0 = gpu", "vfio1 = nic"]
    r = emulate("--kernel", "6.2", "--system", str(EXAMPLES / "two-devices.toml"), "--", "true")
    assert r.stderr.splitlines() == ["/dev/vfio/0 = group group-gpu: gpu", "/dev/vfio/1 = group group-nic: nic"]


# -- file semantics --------------------------------------------------------------------------------
def test_fd_semantics_as_a_struct_file(cc):
    """fork shares the file (closing in the child keeps the parent's), dup/F_DUPFD_CLOEXEC/dup2,
    exec keeps a non-CLOEXEC fd, the last close releases the ctx, sizes and pointers as the kernel
    checks them (errno values are Linux's)."""
    exe = cc(ROOT / "tests" / "emulate" / "fdsem.c")
    r = emulate("--", exe)
    assert r.returncode == 0, r.stderr
    got = dict(line.split() for line in r.stdout.splitlines())
    assert got == {
        "open": "1", "fstat_chr": "1", "stat_chr": "1", "access_missing": "2",   # ENOENT
        "ioas1": "1", "child_ioas": "2", "parent_after_child_close": "3",
        "dup_after_close": "4", "dupfd_number": "50", "dupfd_cloexec": "1", "dupfd_same_ctx": "0",
        "exec_inherited_ioas": "4",      # id 4 was destroyed through the dup: lowest free again
        "fresh_ctx_ioas": "1", "open_cloexec": "1",
        "efault": "14", "size_small": "22", "size_big_zero": "0", "size_big_tail": "7",  # EFAULT EINVAL - E2BIG
        "size_lie_fault": "14", "reserved_flags": "95", "ebadf_not_ours": "25", "read_einval": "22",
    }


# -- the seed thread's program, checked against `pyiommufd run` -------------------------------------
def _scenario_for(order: list[str]) -> str:
    """The scenario doing what examples/two_devices.c does for this attach order."""
    steps = ['[[steps]]\nop = "ioas_alloc"\nas = "ioas"\n',
             '[[steps]]\nop = "map"\nioas = "ioas"\niova = 0x100000\nlength = 0x2000\n']
    for d in order:
        steps += [f'[[steps]]\nop = "bind"\ndevice = "{d}"\n',
                  f'[[steps]]\nop = "attach"\ndevice = "{d}"\npt = "ioas"\n']
    return (EXAMPLES / "two-devices.toml").read_text() + "\n" + "\n".join(steps)


@pytest.mark.parametrize("profile", ["linux-6.2", "linux-6.6", "linux-6.12"])
@pytest.mark.parametrize("reverse", [False, True])
def test_example_matches_run(cc, tmp_path, profile, reverse):
    exe = cc(EXAMPLES / "two_devices.c")
    order = ["nic", "gpu"] if reverse else ["gpu", "nic"]
    r = emulate("--profile", profile, "--system", str(EXAMPLES / "two-devices.toml"), "-q", "--",
                exe, *(["-r"] if reverse else []), "gpu", "nic")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    sc = tmp_path / "same.toml"
    sc.write_text(_scenario_for(order))
    ran = json.loads(subprocess.run([*CLI, "run", str(sc), "--profile", profile, "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    steps = ran["steps"]
    assert all(s["ok"] for s in steps)
    assert lines[0] == f"ioas {steps[0]['id']}"
    if profile == "linux-6.2":     # group path: attach works, no HWPT id to compare
        assert lines[1:] == [f"{d} attached (group path: no HWPT id in the uAPI)" for d in order]
    else:
        assert lines[1:] == [f"{d} dev {steps[2 + 2 * i]['id']} hwpt {steps[3 + 2 * i]['id']}"
                             for i, d in enumerate(order)]
    hwpts = {line.split()[-1] for line in lines[1:]}
    # the era table (SPEC.md section 3): one shared HWPT only in 6.7+ with the non-CC device first
    if profile == "linux-6.12":
        assert len(hwpts) == (2 if reverse else 1)
    elif profile == "linux-6.6":
        assert len(hwpts) == 2


def test_trace_and_record_replay(cc, tmp_path):
    exe = cc(EXAMPLES / "two_devices.c")
    trace, record = tmp_path / "t.jsonl", tmp_path / "r.toml"
    r = emulate("--system", str(EXAMPLES / "two-devices.toml"), "-q", "--trace", str(trace),
                "--record", str(record), "--", exe, "gpu", "nic")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(line) for line in trace.read_text().splitlines()]
    ioctls = [x for x in recs if x["call"] == "ioctl"]
    assert [x["ioctl"] for x in ioctls] == ["IOMMU_IOAS_ALLOC", "IOMMU_IOAS_MAP",
                                            "VFIO_DEVICE_BIND_IOMMUFD", "VFIO_DEVICE_ATTACH_IOMMUFD_PT",
                                            "VFIO_DEVICE_BIND_IOMMUFD", "VFIO_DEVICE_ATTACH_IOMMUFD_PT"]
    for x in recs:   # the keys DESIGN.md promises, on every record
        assert {"pid", "fd_kind", "call", "ioctl", "in", "out", "result", "errno", "us"} <= set(x)
    assert ioctls[0]["out"]["out_ioas_id"] == 1 and ioctls[0]["fd_kind"] == "iommufd"
    assert ioctls[3]["in"]["pt_id"] == 1 and ioctls[3]["out"]["pt_id"] == 3
    assert ioctls[5]["out"]["pt_id"] == 3 and ioctls[5]["fd_kind"] == "cdev"
    assert {x["pid"] for x in recs} == {ioctls[0]["pid"]} and ioctls[0]["pid"] != os.getpid()
    # the recorded scenario replays with the same answers (its expects hold: exit 0)
    text = record.read_text()
    assert 'expect = { ok = true, pt = "hwpt3" }' in text
    rr = subprocess.run([*CLI, "run", str(record)], capture_output=True, text=True)
    assert rr.returncode == 0, rr.stdout + rr.stderr


# -- robustness of the server ----------------------------------------------------------------------
class FakeClient:
    """Speaks the interposer's protocol by hand, to misbehave exactly when a test wants."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.s.connect(path)

    def send(self, type_, a=0, b=0, c=0, payload=b"", fds=()):
        import array
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        self.s.sendmsg([P.HDR.pack(type_, len(payload), a, b, c) + payload], anc)

    def recv(self):
        data = self.s.recv(P.HDR.size + P.MAXMSG)
        return P.HDR.unpack_from(data), data[P.HDR.size:]


def _server(tmp_path):
    host = Host(System(iommu="mock", units=(Unit("mock0"),)), get_profile("linux-6.12"))
    return host, Server(host, str(tmp_path))


def _pump(server, until, limit=2.0):
    end = time.time() + limit
    while not until() and time.time() < end:
        server.poll_once(0.01)


def test_client_killed_mid_call_leaves_the_model_consistent(tmp_path):
    host, server = _server(tmp_path)
    try:
        f = FakeClient(server.path)
        f.send(P.T_OPEN, payload=b"/dev/iommu", fds=[f.s.fileno()])
        _pump(server, lambda: host.files)
        assert f.recv()[0][0] == P.C_RET
        ch = FakeClient(server.path)
        ch.send(P.T_CHAN)
        _pump(server, lambda: server.channels)
        assert ch.recv()[0][0] == P.C_RET
        for conn in server.channels:     # as for a process the server may not read (ptrace rules):
            conn.mm.usable = False       # it asks the program for its memory
        before = host.snapshot()
        # an IOAS_ALLOC with no prefetched head: the server asks for the argument...
        ch.send(P.T_IOCTL, uapi.IOMMU_IOAS_ALLOC, 0x10000, fds=[f.s.fileno()])
        import threading
        asked = []
        t = threading.Thread(target=lambda: asked.append(ch.recv()))
        t.start()
        _pump(server, lambda: asked, limit=1.0)   # the server is now waiting on the client
        t.join(2)
        # (the fake client answered nothing: kill it in the middle of the call)
        assert asked and asked[0][0][0] == P.S_READ
        ch.s.close()
        _pump(server, lambda: False, limit=0.3)
        assert host.snapshot() == before
        # other clients still work: a real program allocates id 1 in a fresh ctx
        ch2 = FakeClient(server.path)
        ch2.send(P.T_CHAN)
        _pump(server, lambda: False, limit=0.2)
        assert ch2.recv()[0][0] == P.C_RET
        buf = uapi.iommu_ioas_alloc(size=12)
        ch2.send(P.T_IOCTL, uapi.IOMMU_IOAS_ALLOC, 0x10000, payload=bytes(buf), fds=[f.s.fileno()])
        _pump(server, lambda: False, limit=0.3)
        (type_, length, result, err, _c), wb = ch2.recv()
        assert (type_, result, err) == (P.S_DONE, 0, 0)
        off, n = P.WB.unpack_from(wb)
        assert off == 8 and int.from_bytes(wb[8:8 + n], "little") == 1
        # closing the file's last reference releases the ctx
        f.s.close()
        _pump(server, lambda: not host.ctxs)
        assert not host.ctxs and not host.files
    finally:
        server.close()


def test_no_file_from_a_message(tmp_path):
    """A call that passes no fd (only a number in a message) names no file: EBADF."""
    host, server = _server(tmp_path)
    try:
        ch = FakeClient(server.path)
        ch.send(P.T_CHAN)
        _pump(server, lambda: server.channels)
        ch.recv()
        ch.send(P.T_IOCTL, uapi.IOMMU_IOAS_ALLOC, 0x10000, payload=bytes(uapi.iommu_ioas_alloc(size=12)))
        _pump(server, lambda: False, limit=0.2)
        (type_, _l, result, err, _c), _ = ch.recv()
        assert (type_, result, err) == (P.S_DONE, -1, 9)   # EBADF
        # a passed fd that is not one of ours (a pipe) is not an emulated file either
        r, w = os.pipe()
        ch.send(P.T_IOCTL, uapi.IOMMU_IOAS_ALLOC, 0x10000, payload=bytes(uapi.iommu_ioas_alloc(size=12)), fds=[r])
        _pump(server, lambda: False, limit=0.2)
        (type_, _l, result, err, _c), _ = ch.recv()
        assert (result, err) == (-1, 25)                   # ENOTTY
        os.close(r), os.close(w)
    finally:
        server.close()


def test_killed_programs_release_their_files(cc, tmp_path):
    """Programs SIGKILLed at random points of a busy loop: their files are released, the next
    program gets a fresh ctx (ids from 1), and the emulator keeps serving."""
    src = tmp_path / "loop.c"
    src.write_text(r'''
#include <fcntl.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <linux/iommufd.h>
int main(int argc, char **argv) {
    int fd = open("/dev/iommu", O_RDWR);
    for (long i = 0; argc > 1; i++) {
        struct iommu_ioas_alloc a = { .size = sizeof(a) };
        ioctl(fd, IOMMU_IOAS_ALLOC, &a);
        struct iommu_destroy d = { .size = sizeof(d), .id = a.out_ioas_id };
        ioctl(fd, IOMMU_DESTROY, &d);
    }
    struct iommu_ioas_alloc a = { .size = sizeof(a) };
    int r = ioctl(fd, IOMMU_IOAS_ALLOC, &a);
    printf("%d %u\n", r, a.out_ioas_id);
    return 0;
}''')
    exe = cc(src)
    script = f"for i in 1 2 3 4 5; do {exe} loop & p=$!; sleep 0.0$i; kill -9 $p; wait $p; done; {exe}"
    r = emulate("--", "sh", "-c", script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "0 1"
    assert "Traceback" not in r.stderr


def test_interposer_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("PYIOMMUFD_CACHE", str(tmp_path))
    first = build.interposer()
    mtime = first.stat().st_mtime_ns
    assert build.interposer() == first and first.stat().st_mtime_ns == mtime
    assert oct(first.parent.parent.stat().st_mode & 0o777) == "0o700"


def test_profile_file_reaches_the_program(cc, tmp_path):
    """--profile-file: a patch modelled as a profile changes what a real program sees."""
    exe = cc(EXAMPLES / "two_devices.c")
    patch = tmp_path / "keep.toml"
    patch.write_text('name = "my-upgrade-keep"\nbase = "linux-6.12"\n[switches]\nupgrade_on_attach = true\n'
                     '[sources]\nupgrade_on_attach = "test"\n')
    got = {}
    for args in ([], ["--profile-file", str(patch)]):
        r = emulate(*args, "--system", str(EXAMPLES / "two-devices.toml"), "-q", "--", exe, "gpu", "nic")
        assert r.returncode == 0, r.stderr
        got[bool(args)] = {line.split()[-1] for line in r.stdout.splitlines()[1:]}
    assert len(got[False]) == 1 and len(got[True]) == 2    # 6.12: one HWPT; with the upgrade: two


def test_legacy_container_served_by_iommufd(cc):
    """6.2 group path with /dev/vfio/vfio as the container: iommufd serves it (vfio_compat.c)."""
    exe = cc(ROOT / "tests" / "emulate" / "container.c")
    r = emulate("--kernel", "6.2", "--system", str(EXAMPLES / "two-devices.toml"), "-q", "--", exe)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["container 1 api 0 type1v2 1", "set_container 0 ", "set_iommu 0 ",
                                     "device fd 1 "]
