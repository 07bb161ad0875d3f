"""Decoding of emulated calls for ``--trace``: the struct of a request, with uapi.py's field
names, taken from the same tables the model decodes with (kernel/host.py)."""
from __future__ import annotations

import ctypes

from ..kernel import host as khost


def struct_of(host, request: int):
    """The kernel struct this request carries in this profile, or None."""
    op = khost._iommufd_op_table(host.profile).get(request)
    if op is not None:
        return op[1]
    cdev = khost._CDEV_OPS.get(request)
    if cdev is not None:
        return cdev[0]
    return getattr(khost, "REQUEST_STRUCTS", {}).get(request)


def _value(v):
    if isinstance(v, ctypes.Structure | ctypes.Union):
        return fields(v)
    if isinstance(v, ctypes.Array):
        return [_value(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v


def fields(s) -> dict:
    return {name: _value(getattr(s, name)) for name, *_ in s._fields_}


def decode(host, request: int | None, data: bytes | None):
    """{field: value} for the struct bytes of a call, or {"hex": ...} when the layout is not
    known (a value argument, a string, a request the profile's kernel does not have)."""
    if data is None:
        return None
    kstruct = struct_of(host, request) if request is not None else None
    if kstruct is None:
        return {"hex": bytes(data[:256]).hex()}
    size = ctypes.sizeof(kstruct)
    return fields(kstruct.from_buffer_copy(bytes(data[:size]).ljust(size, b"\0")))
