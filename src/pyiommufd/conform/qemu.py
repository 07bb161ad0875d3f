"""Boot the conformance kernel + initramfs under QEMU (TCG) and collect the agent's output.

The guest's /init (see build.INIT_TEMPLATE) prints the agent's stderr, stdout and exit status
between marker lines on the serial console, then powers off.  We read the console as it comes,
stop as soon as the exit-status marker is seen (power-off is only a nicety), and cut the stdout
out from between the markers.
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .build import MARK_BEGIN, MARK_END, MARK_RC, MARK_STDERR_BEGIN, MARK_STDERR_END

QEMU = "qemu-system-x86_64"
# no_timer_check: under TCG on a loaded host (two VMs on two cores) the IO-APIC timer check in
# check_timer() can miss its ticks and panic ("timer doesn't work through Interrupt-remapped
# IO-APIC"); the check guards against broken chipsets, not against anything QEMU emulates.
CMDLINE = "console=ttyS0 intel_iommu=on panic=-1 quiet no_timer_check"
TAIL_LINES = 40
EDU = "edu"  # QEMU's educational PCI device, 1234:11e8, can DMA
_RC_LINE = re.compile(re.escape(MARK_RC.encode()) + rb"\d+===\r?\n")


class BootError(RuntimeError):
    """QEMU did not produce the agent's output; carries the end of the console log."""

    def __init__(self, message: str, console: str = ""):
        self.console = console
        tail = "\n".join(console.splitlines()[-TAIL_LINES:])
        super().__init__(f"{message}\n--- console tail ---\n{tail}" if console else message)


class AgentError(BootError):
    """The agent exited non-zero without printing anything on stdout."""


@dataclass
class BootResult:
    output: str  # the agent's stdout
    stderr: str  # the agent's stderr
    rc: int  # the agent's exit status
    console: str  # the whole serial console
    seconds: float  # wall time of the boot


def qemu_command(kernel: Path | str, initramfs: Path | str, *, snoop_control: bool | None,
                 n_devices: int, behind_bridge: bool, memory: str = "512M",
                 qemu: str = QEMU, append: str = "") -> list[str]:
    """QEMU argv for one configuration.

    snoop_control None: no intel-iommu at all (for the iommufd selftest mock).  Otherwise the
    emulated VT-d's ECAP.SC follows it, so it decides whether every device is CC-capable (QEMU
    has one intel-iommu per VM).  Devices on the root bus get one iommu_group each; behind a
    conventional pci-bridge they share the bridge's requester id, hence one group.  append:
    more kernel parameters (e.g. ``hugepages=128`` for the selftest)."""
    if n_devices < 0:
        raise ValueError("n_devices must be >= 0")
    cmd = [qemu, "-accel", "tcg", "-cpu", "max", "-machine", "q35", "-m", memory,
           "-nographic", "-no-reboot", "-nic", "none",
           "-kernel", str(kernel), "-initrd", str(initramfs), "-append", f"{CMDLINE} {append}".strip()]
    if snoop_control is not None:
        # intel-iommu must come before the devices it translates for.
        cmd += ["-device", "intel-iommu,intremap=on,caching-mode=on,snoop-control="
                + ("on" if snoop_control else "off")]
    if behind_bridge:
        cmd += ["-device", "pci-bridge,id=bridge0,chassis_nr=1"]
        cmd += [a for i in range(n_devices)
                for a in ("-device", f"{EDU},bus=bridge0,addr={i + 1:#x}")]
    else:
        cmd += [a for _ in range(n_devices) for a in ("-device", EDU)]
    return cmd


def _between(lines: list[str], begin: str, end: str) -> list[str] | None:
    try:
        i = lines.index(begin)
        return lines[i + 1:lines.index(end, i + 1)]
    except ValueError:
        return None


def parse_console(console: str) -> tuple[str, str, int]:
    """Cut (stdout, stderr, exit status) of the agent out of the console text.

    The serial line turns "\\n" into "\\r\\n"; markers must be whole lines."""
    lines = console.replace("\r", "").split("\n")
    out = _between(lines, MARK_BEGIN, MARK_END)
    if out is None:
        raise BootError("agent output markers not found on the console", console)
    err = _between(lines, MARK_STDERR_BEGIN, MARK_STDERR_END) or []
    rcs = [ln[len(MARK_RC):-3] for ln in lines if ln.startswith(MARK_RC) and ln.endswith("===")]
    if not rcs or not rcs[-1].isdigit():
        raise BootError("agent exit status marker not found on the console", console)
    return "\n".join(out), "\n".join(err), int(rcs[-1])


def run(kernel: Path | str, initramfs: Path | str, *, snoop_control: bool | None,
        n_devices: int, behind_bridge: bool, timeout: float = 120.0,
        qemu: str = QEMU, append: str = "", memory: str = "512M") -> BootResult:
    """Boot once and return everything the agent reported.  Raises BootError on timeout, QEMU
    failure or missing markers, AgentError if the agent failed and printed nothing."""
    if not shutil.which(qemu):
        raise BootError(f"{qemu} not found: apt-get install qemu-system-x86 "
                        "(or run src/pyiommufd/conform/install-deps.sh)")
    cmd = qemu_command(kernel, initramfs, snoop_control=snoop_control, n_devices=n_devices,
                       behind_bridge=behind_bridge, qemu=qemu, append=append, memory=memory)
    t0 = time.monotonic()
    deadline = t0 + timeout
    buf = bytearray()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        done_at = None  # when the exit-status marker was seen
        while True:
            now = time.monotonic()
            if done_at is None and now > deadline:
                raise BootError(f"timeout after {timeout:g} s: {' '.join(cmd)}",
                                buf.decode(errors="replace"))
            if done_at is not None and now > done_at + 2.0:
                break  # output complete; don't wait for a slow power-off
            if sel.select(timeout=0.2):
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break  # QEMU exited
                buf += chunk
                if done_at is None and _RC_LINE.search(buf):
                    done_at = time.monotonic()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
    seconds = time.monotonic() - t0
    console = buf.decode(errors="replace")
    output, stderr, rc = parse_console(console)
    if rc and not output.strip():
        raise AgentError(f"agent exited with status {rc}:\n{stderr}", console)
    return BootResult(output, stderr, rc, console, seconds)


def boot(kernel: Path | str, initramfs: Path | str, *, snoop_control: bool | None,
         n_devices: int, behind_bridge: bool, timeout: float = 120.0) -> str:
    """Boot once and return the agent's stdout (see run() for the errors)."""
    return run(kernel, initramfs, snoop_control=snoop_control, n_devices=n_devices,
               behind_bridge=behind_bridge, timeout=timeout).output
