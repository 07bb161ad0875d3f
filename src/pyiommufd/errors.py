"""One error tree.  Kernel answers are OSError subclasses carrying errno, so code
written against the real kernel (``except OSError as e: e.errno == errno.EINVAL``)
works unchanged against the emulator."""
from __future__ import annotations

import os

from . import uapi


class PyiommufdError(Exception):
    """Root of every error this package raises on purpose."""


class IoctlError(PyiommufdError, OSError):
    """An ioctl failed: ``errno`` as the kernel returned it, the request, the struct sent."""

    def __init__(self, err: int, request: int | None = None, struct: object = None, detail: str = ""):
        name = uapi.errno_name(err)
        what = uapi.request_name(request) if request is not None else "call"
        msg = f"{what}: {name} ({os.strerror(err)})" + (f": {detail}" if detail else "")
        OSError.__init__(self, err, msg)
        self.request = request
        self.struct = struct
        self.detail = detail

    @property
    def errno_name(self) -> str:
        return uapi.errno_name(self.errno)

    def __str__(self) -> str:  # OSError's default puts "[Errno N]" first; keep the kernel name
        return self.strerror


class EmulationGap(PyiommufdError, NotImplementedError):
    """The emulator does not model this request or option (never a silent fake answer)."""


class EnvironmentMissing(PyiommufdError):
    """The host lacks what a command needs (no /dev/iommu, no permission, no QEMU); CLI exit 3."""


class ScenarioError(PyiommufdError):
    """A scenario file cannot be run as written; CLI exit 2.  The message names file, step and key."""


class StateError(PyiommufdError):
    """A client handle was used in a state that does not allow the call (names actual and required)."""
