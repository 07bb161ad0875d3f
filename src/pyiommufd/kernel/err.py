"""The kernel model's internal error: a negative errno on its way back to the ioctl."""
from __future__ import annotations


class KernelErr(Exception):
    """Raised inside the model where the kernel returns ``-errno``.

    ``detail`` says which check failed (the kernel says nothing; the emulator does,
    to help the reader).  ``partial`` carries a byte count for ioctls that do part of
    their work before failing (IOAS_UNMAP).  ``respond`` marks an error returned after
    iommufd_ucmd_respond already copied the struct back (IOAS_IOVA_RANGES' EMSGSIZE,
    HWPT_INVALIDATE's entry_num): the ioctl layer writes the struct back, then fails."""

    __slots__ = ("errno", "detail", "partial", "respond")

    def __init__(self, err: int, detail: str = "", partial: int | None = None, respond: bool = False):
        super().__init__(err, detail)
        self.errno = err
        self.detail = detail
        self.partial = partial
        self.respond = respond
