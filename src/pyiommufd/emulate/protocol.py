"""The wire protocol between the interposer (preload.c) and the server: one SOCK_SEQPACKET
record per message, a header ``{u32 type, u32 len; i64 a, b, c}`` and ``len`` payload bytes.
The numbers are preload.c's enum; keep both in step.

Client -> server
  T_OPEN  (first message of a file connection) payload path, a = open flags, SCM_RIGHTS: the
          connection's own client end (its inode names the file in later calls)
  T_CHAN  (first message of a call channel)
  T_IOCTL a = request, b = arg, c = the fd number, payload = the first bytes at arg (prefetch),
          SCM_RIGHTS: the file at that number -- left out once this channel has passed it and
          the number still names it (the server maps the number to the file proved before)
  T_READ  a = count;  T_WRITE payload = data;  c and SCM_RIGHTS as for T_IOCTL
  T_STAT  payload path: does the emulated path exist?
Server -> client during a call, each answered before the next
  S_READ  a = addr, b = len, c = 1 if a short read is fine   -> C_DATA a = errno, payload
  S_WRITE a = addr, payload                                  -> C_RET a = errno
  S_ZERO  a = addr, b = len (check_zeroed_user)              -> C_RET a = errno, b = 1 if zero
  S_GETFD a = fd number (fdget)                              -> C_RET a = errno, SCM_RIGHTS: the fd
  S_NEWFD a = 1 for O_CLOEXEC, SCM_RIGHTS: a new file        -> C_RET a = errno, b = its number
  S_DONE  a = result, b = errno, payload = write-back records (u32 offset, u32 len, bytes)
          for ioctl, the data for read
"""
from __future__ import annotations

import struct

HDR = struct.Struct("<IIqqq")
T_OPEN, T_CHAN, T_IOCTL, T_READ, T_WRITE, T_STAT = 1, 2, 3, 4, 5, 6
S_READ, C_DATA, S_WRITE, C_RET, S_GETFD, S_NEWFD, S_ZERO = 10, 11, 12, 13, 14, 15, 16
S_DONE = 20
MAXMSG = 64 * 1024     # payload bytes in one record (preload.c MAXMSG)
WB = struct.Struct("<II")


def writeback_records(before: bytes, after: bytes) -> bytes:
    """What copy_to_user wrote, as one (offset, len, bytes) run from the first to the last
    changed byte (the kernel writes the whole struct back; this leaves the rest untouched)."""
    n = min(len(before), len(after))
    x = int.from_bytes(before[:n], "little") ^ int.from_bytes(after[:n], "little")
    if not x:
        return b""
    lo, hi = ((x & -x).bit_length() - 1) // 8, (x.bit_length() - 1) // 8
    return WB.pack(lo, hi - lo + 1) + bytes(after[lo:hi + 1])
