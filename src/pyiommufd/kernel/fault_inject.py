"""Fault injection as iommufd_fail_nth.c drives it: /proc/<pid>/task/<tid>/fail-nth.

Mirrors fs/proc/base.c (proc_fail_nth_write / proc_fail_nth_read) and lib/fault-inject.c
should_fail_ex (Linux 6.12.117): writing N arms the task so that its Nth fault-injection check
fails; each check decrements the count and the one that reaches 0 fails; reading gives the
count left ("0\\n" once the failure was injected).  The model's checks are Host.fallible -- the
allocations and driver calls that can fail in the kernel -- not every slab allocation the kernel
makes, so a sweep takes fewer steps than on Linux; each still fails exactly one check.

Under ``pyiommufd emulate`` a task is the calling process (the server cannot tell a program's
threads apart); ``Host.fail_nth`` / ``fallible_count`` carry the armed count through one call.
"""
from __future__ import annotations

import errno
import re

from .err import KernelErr

PATH = re.compile(r"^/proc/(?:self|thread-self|\d+)(?:/task/\d+)?/fail-nth$")


class FailNthFile:
    """An open fail-nth file of one task."""

    __slots__ = ("task", "refs")
    kind = "fail-nth"

    def __init__(self, task: int):
        self.task = task

    def write(self, host, data: bytes) -> int:
        """proc_fail_nth_write: kstrtouint_from_user (EINVAL unless an unsigned number)."""
        text = data.decode(errors="replace").strip()
        if not re.fullmatch(r"(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)", text):
            raise KernelErr(errno.EINVAL, f"fail-nth: {text!r} is not a number")
        n = int(text, 0)
        if n >= 1 << 32:
            raise KernelErr(errno.ERANGE, "fail-nth: out of range")
        host.task_fail_nth[self.task] = n
        return len(data)

    def read(self, host, count: int) -> bytes:
        """proc_fail_nth_read: "%u\\n" of the count left."""
        return f"{host.task_fail_nth.get(self.task, 0)}\n".encode()[:count]

    def snapshot(self):
        return ("fail-nth", self.task)


def arm(host, task: int) -> int:
    """Before a call of ``task``: the model fails its fallible step number N (0: none)."""
    n = host.task_fail_nth.get(task, 0)
    host.fail_nth, host.fallible_count = n, 0
    return n


def disarm(host, task: int, armed: int) -> None:
    """After the call: the count left, 0 once the failure was injected (should_fail_ex)."""
    if armed:
        host.task_fail_nth[task] = max(armed - host.fallible_count, 0)
    host.fail_nth, host.fallible_count = 0, 0
