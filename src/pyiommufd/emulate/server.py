"""The emulator side of ``pyiommufd emulate``: a Unix-socket server that runs the one kernel
model (kernel.host.Host) for real programs loaded with the interposer (preload.c).

It sits on the transport seam only: a call arrives as (file, request, arg), the server reads
the argument from the client's memory as the kernel's ioctl entry points copy it
(iommufd_fops_ioctl: the ``size`` field, then min(size, struct) bytes and a zero check of the
rest; VFIO: the struct head up to ``argsz``), hands the bytes to ``Host.ioctl`` -- the same
entry point the Python client's EmulatedTransport uses -- and writes back what changed.
Pointers inside structs are read and written by the model itself through ``host.mem``,
which here is the calling process's real memory (ClientMemory); fds named inside structs
go through ``host.fds`` (ClientFds: the client passes the file itself).

The server is single-threaded: one call runs at a time, like a big kernel lock.  A client
that dies in the middle of a call turns into EFAULT inside the model (whose error paths undo
the call, as the kernel's do) and gets no answer.
"""
from __future__ import annotations

import array
import ctypes
import errno
import os
import select
import socket
import struct
import sys
import time

from .. import uapi
from ..errors import EmulationGap
from ..kernel import fault_inject, host as khost
from ..kernel.err import KernelErr
from ..kernel.main import IommufdCtx
from . import protocol as P

CAP = 64 * 1024          # bytes of an iommufd struct read at most; beyond, the tail is zero-checked
VFIO_HEAD = 4096         # VFIO structs: the head read (the handler takes its minsz of it)
CALL_TIMEOUT = 30.0      # a client silent this long in the middle of a call is treated as gone
UCRED = struct.Struct("iII")


class ClientGone(KernelErr):
    """The client hung up or stopped answering during a call: EFAULT inside the model."""

    def __init__(self, detail: str = "client gone"):
        super().__init__(errno.EFAULT, detail)


_RBUF = bytearray(P.HDR.size + P.MAXMSG)   # the server is single-threaded: one receive buffer
_RVIEW = memoryview(_RBUF)
_CMSG_SPACE = socket.CMSG_SPACE(4 * 4)


class Conn:
    """One connection: a call channel, or an emulated file (``host_fd`` set).  A channel's
    ``proved`` maps the fd numbers whose files it has passed (SCM_RIGHTS) to those files."""

    __slots__ = ("sock", "pid", "host_fd", "path", "ino", "dead", "proved", "mm", "fds")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
        self.pid = UCRED.unpack(cred)[0]     # from the connection, never from a message
        self.host_fd = None
        self.path = None
        self.ino = None
        self.dead = False
        self.proved: dict[int, Conn] = {}
        self.mm = None
        self.fds = None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                        struct.pack("ll", int(CALL_TIMEOUT), int(CALL_TIMEOUT % 1 * 1e6)))

    def send(self, type_: int, a: int = 0, b: int = 0, c: int = 0, payload: bytes = b"", fds=()) -> None:
        msg = [P.HDR.pack(type_, len(payload), a, b, c) + payload]
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg(msg, anc)
        except OSError as e:
            self.dead = True
            raise ClientGone(f"send: {e}") from None

    def recv(self):
        """One message: (type, a, b, c, payload, fds).  ClientGone on EOF, error or timeout
        (SO_RCVTIMEO, set once per connection: no extra system call per message)."""
        try:   # into one preallocated buffer: no 64 KiB allocation per message
            n, anc, _flags, _ = self.sock.recvmsg_into([_RBUF], _CMSG_SPACE)
        except (OSError, socket.timeout) as e:
            self.dead = True
            raise ClientGone(f"recv: {e}") from None
        data = _RVIEW[:n]
        fds = []
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(cdata[:len(cdata) - len(cdata) % 4])
                fds.extend(arr)
        if len(data) < P.HDR.size:
            for fd in fds:
                os.close(fd)
            self.dead = True
            raise ClientGone("connection closed")
        type_, length, a, b, c = P.HDR.unpack_from(data)
        return type_, a, b, c, bytes(data[P.HDR.size:P.HDR.size + length]), fds


def _mapped(pid: int, addr: int, length: int) -> bool:
    """Is [addr, addr+length) covered by the mappings of process ``pid`` (/proc/pid/maps)?"""
    try:
        with open(f"/proc/{pid}/maps") as f:
            spans = sorted(tuple(int(x, 16) for x in line.split(None, 1)[0].split("-")) for line in f)
    except OSError:
        return False
    cur, end = addr, addr + length
    for lo, hi in spans:
        if lo > cur:
            break
        cur = max(cur, hi)
        if cur >= end:
            return True
    return cur >= end


_libc = ctypes.CDLL(None, use_errno=True)


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


for _fn in (_libc.process_vm_readv, _libc.process_vm_writev):
    _fn.argtypes = [ctypes.c_int, ctypes.POINTER(_Iovec), ctypes.c_ulong, ctypes.POINTER(_Iovec),
                    ctypes.c_ulong, ctypes.c_ulong]
    _fn.restype = ctypes.c_ssize_t


class ProcessMm:
    """The address space of one program process (struct mm_struct as iommufd holds it:
    iopt_pages->source_mm).  The process is the one at the other end of a call channel: its pid
    comes from SO_PEERCRED when it connected, and a pidfd taken while it waited for the answer
    tells when it is gone.  Reads and writes are process_vm_readv/writev, which honour the
    page protections as copy_from_user / copy_to_user do; a gone process reads as EFAULT
    (mmget_not_zero fails)."""

    __slots__ = ("pid", "pidfd", "usable", "mm_key")

    def __init__(self, pid: int):
        self.pid = pid
        self.mm_key = ("pid", pid)   # kernel/pages.py: the identity page refcounts are kept by
        self.usable = True
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            self.pidfd, self.usable = None, False

    def alive(self) -> bool:
        if self.pidfd is None:
            return False
        return not select.select([self.pidfd], [], [], 0)[0]

    def __del__(self) -> None:   # the model may keep an mm longer than the channel (an area's)
        if self.pidfd is not None:
            os.close(self.pidfd)

    def probe(self, addr: int, length: int) -> None:
        """Is the range mapped in this process (pin_user_pages without moving data)?"""
        if not self.alive() or not _mapped(self.pid, addr, length):
            raise KernelErr(errno.EFAULT, f"[{addr:#x}, +{length:#x}) not mapped in process {self.pid}")

    def _xfer(self, fn, addr: int, buf, length: int) -> int:
        """Bytes moved, or -errno."""
        local = _Iovec(ctypes.addressof(buf), length)
        remote = _Iovec(addr, length)
        n = fn(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        return n if n >= 0 else -ctypes.get_errno()

    def read_upto(self, addr: int, length: int):
        """Up to ``length`` readable bytes at ``addr``; None if this process cannot be read
        from here (no ptrace permission: the caller asks the program instead)."""
        if not self.usable:
            return None
        if not self.alive():
            raise KernelErr(errno.EFAULT, f"process {self.pid} is gone")
        buf = ctypes.create_string_buffer(max(length, 1))
        n = self._xfer(_libc.process_vm_readv, addr, buf, length)
        if n == -errno.EPERM:
            self.usable = False
            return None
        if n == -errno.ESRCH:
            raise KernelErr(errno.EFAULT, f"process {self.pid} is gone")
        return buf.raw[:max(n, 0)]

    def read(self, addr: int, length: int):
        data = self.read_upto(addr, length)
        if data is not None and len(data) != length:
            raise KernelErr(errno.EFAULT, f"user address {addr + len(data):#x} not readable")
        return data

    def write(self, addr: int, data: bytes):
        """True when written; None when the program must be asked; KernelErr(EFAULT)."""
        if not self.usable:
            return None
        if not self.alive():
            raise KernelErr(errno.EFAULT, f"process {self.pid} is gone")
        buf = ctypes.create_string_buffer(bytes(data), max(len(data), 1))
        n = self._xfer(_libc.process_vm_writev, addr, buf, len(data))
        if n == -errno.EPERM:
            self.usable = False
            return None
        if n != len(data):
            raise KernelErr(errno.EFAULT, f"user address {addr:#x} not writable")
        return True


class ClientMemory:
    """copy_from_user / copy_to_user on the calling process: ``host.mem`` during a call.
    Reads inside the prefetched head of the argument cost nothing; the rest goes through the
    process's ProcessMm, or, where this server may not read it (ptrace rules), is asked for.
    ``mm_key`` names the process's address space (pages pinned from it are counted per
    address space, kernel/pages.py), ``probe`` checks a range is mapped without moving it."""

    def __init__(self, conn: Conn, base: int, head: bytes):
        self.conn, self.base, self.head = conn, base, head

    def probe(self, addr: int, length: int) -> None:
        if not _mapped(self.conn.pid, addr, length):
            raise KernelErr(errno.EFAULT, f"[{addr:#x}, +{length:#x}) not mapped in the caller")

    @property
    def mm_key(self):
        """The address space's identity (kernel/pages.py mm_key): one per client process."""
        return self.conn.mm.mm_key

    def _ask(self, addr: int, length: int, partial: bool) -> bytes:
        out = bytearray()
        while len(out) < length:
            n = min(P.MAXMSG, length - len(out))
            self.conn.send(P.S_READ, addr + len(out), n, int(partial))
            type_, err, _b, _c, data, _fds = self.conn.recv()
            if type_ != P.C_DATA:
                raise ClientGone("protocol error: expected C_DATA")
            if err:
                raise KernelErr(err, f"user address {addr + len(out):#x} not readable")
            out += data
            if partial and len(data) < n:
                break
        return bytes(out)

    def read(self, addr: int, length: int) -> bytes:
        if length <= 0:
            return b""
        off = addr - self.base
        if 0 <= off and off + length <= len(self.head):
            return self.head[off:off + length]
        if addr < 0 or addr + length > 1 << 64:
            raise KernelErr(errno.EFAULT, f"user address {addr:#x} out of range")
        data = self.conn.mm.read(addr, length)
        return data if data is not None else self._ask(addr, length, False)

    def read_upto(self, addr: int, length: int) -> bytes:
        """As many bytes as are readable from ``addr``, up to ``length``."""
        off = addr - self.base
        if off == 0 and length <= len(self.head):
            return self.head[:length]
        data = self.conn.mm.read_upto(addr, length)
        return data if data is not None else self._ask(addr, length, True)

    def write(self, addr: int, data: bytes) -> None:
        if self.conn.mm.write(addr, data) is None:
            self._ask_write(addr, data)
        off = addr - self.base   # keep the cached head coherent with what was written
        if off < len(self.head) and off + len(data) > 0:
            head = bytearray(self.head)
            lo, hi = max(off, 0), min(off + len(data), len(head))
            head[lo:hi] = data[lo - off:hi - off]
            self.head = bytes(head)

    def _ask_write(self, addr: int, data: bytes) -> None:
        for i in range(0, len(data), P.MAXMSG):
            chunk = bytes(data[i:i + P.MAXMSG])
            self.conn.send(P.S_WRITE, addr + i, payload=chunk)
            type_, err, *_ = self.conn.recv()
            if type_ != P.C_RET:
                raise ClientGone("protocol error: expected C_RET")
            if err:
                raise KernelErr(err, f"user address {addr + i:#x} not writable")

    def zeroed(self, addr: int, length: int) -> bool:
        """check_zeroed_user: True if all zero, KernelErr(EFAULT) if unreadable."""
        self.conn.send(P.S_ZERO, addr, length)
        type_, err, zero, *_ = self.conn.recv()
        if type_ != P.C_RET:
            raise ClientGone("protocol error: expected C_RET")
        if err:
            raise KernelErr(err, f"user address range at {addr:#x} not readable")
        return bool(zero)


class ClientFds:
    """The calling process's fd table (``host.fds`` during a call): fdget asks the client for
    the file itself; fd_install sends it a new one and learns the number it got."""

    def __init__(self, server: "Server", conn: Conn):
        self.server, self.conn = server, conn

    def resolve(self, n: int) -> int:
        self.conn.send(P.S_GETFD, n)
        type_, err, _b, _c, _p, fds = self.conn.recv()
        if type_ != P.C_RET:
            raise ClientGone("protocol error: expected C_RET")
        if err or not fds:
            raise KernelErr(errno.EBADF, f"fd {n} is not open")
        entry = self.server.file_of(fds[0])
        if entry is None:   # an open file that is not ours: no iommufd, no VFIO file
            raise KernelErr(errno.EBADFD, f"fd {n} is not an emulated file")
        return entry.host_fd

    def install(self, host_fd: int) -> int:
        client = self.server.new_file_socket(host_fd)
        try:
            self.conn.send(P.S_NEWFD, 1, fds=[client.fileno()])
        finally:
            client.close()
        type_, err, number, *_ = self.conn.recv()
        if type_ != P.C_RET or err:
            raise KernelErr(err or errno.EMFILE, "the client could not take the new fd")
        return number


def _fd_kind(host, host_fd) -> str:
    f = host.files.get(host_fd)
    if f is None:
        return "closed"
    if isinstance(f, IommufdCtx):
        return "iommufd"
    return getattr(f, "kind", type(f).__name__)


class Server:
    """Serve one emulated machine to every process of the command."""

    def __init__(self, host, sockdir: str, trace=None, recorder=None, paths=None):
        self.host = host
        # pages->source_mm of another process: reachable while it lives (kernel/pages.py)
        host.remote_mem = self.remote_mem
        self.mms: dict[int, ProcessMm] = {}           # pid -> its address space
        self.path = os.path.join(sockdir, "iommufd.sock")
        self.paths = paths or {}          # client path -> host path (group numbers)
        self.trace = trace                # callable(dict) or None
        self.recorder = recorder
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.listener.bind(self.path)
        self.listener.listen(128)
        self.listener.setblocking(False)
        self.ep = select.epoll()
        self.watched: dict[int, object] = {}        # fileno -> "listen" | "files" | "exit" | a channel
        self._watch(self.listener.fileno(), "listen")
        self.fpoll = select.epoll()                 # file connections: readable means released
        self._watch(self.fpoll.fileno(), "files")
        self.by_fileno: dict[int, Conn] = {}
        self.by_ino: dict[int, Conn] = {}
        self.gaps: set[str] = set()
        self.calls = 0

    def remote_mem(self, key):
        """host.remote_mem: the address space ``key`` names, None once its process has exited."""
        mm = self.mms.get(key[1]) if isinstance(key, tuple) and key[0] == "pid" else None
        return mm if mm is not None and mm.alive() else None

    # -- files -------------------------------------------------------------------------------
    def file_of(self, fd: int) -> Conn | None:
        """The emulated file a passed fd refers to (by the inode of the client's socket end);
        the passed fd is closed."""
        try:
            ino = os.fstat(fd).st_ino
        finally:
            os.close(fd)
        return self.by_ino.get(ino)

    def _add_file(self, conn: Conn, host_fd: int, ino: int, path: str | None) -> None:
        conn.host_fd, conn.ino, conn.path = host_fd, ino, path
        self.by_ino[ino] = conn
        conn.sock.setblocking(False)
        self.by_fileno[conn.sock.fileno()] = conn
        self.fpoll.register(conn.sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)

    def new_file_socket(self, host_fd: int) -> socket.socket:
        """A file the kernel made inside a call (a group's device fd, a fault queue, an
        access): a connection to ourselves whose client end goes to the program."""
        client = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        client.connect(self.path)
        self.listener.setblocking(True)
        try:
            sock, _ = self.listener.accept()
        finally:
            self.listener.setblocking(False)
        conn = Conn(sock)
        conn.pid = None
        self._add_file(conn, host_fd, os.fstat(client.fileno()).st_ino, None)
        return client

    def drain_releases(self) -> None:
        """Release every file whose last reference is gone (the socket reads EOF).  Run before
        each call: a close() in the program happened before its next call, as in the kernel."""
        for fileno, _ in self.fpoll.poll(0):
            conn = self.by_fileno[fileno]
            try:
                data = conn.sock.recv(P.HDR.size + 16)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if data:
                continue          # files carry no data; ignore stray bytes
            self.fpoll.unregister(fileno)
            del self.by_fileno[fileno]
            conn.sock.close()
            del self.by_ino[conn.ino]
            self._set_caller(None)
            t0 = time.perf_counter()
            err = 0
            try:
                self.host.close(conn.host_fd)
            except KernelErr as e:
                err = e.errno
            self._log({"pid": conn.pid, "fd_kind": "file", "call": "close", "path": conn.path,
                       "host_fd": conn.host_fd, "result": -1 if err else 0,
                       "errno": uapi.errno_name(err) if err else None,
                       "us": round((time.perf_counter() - t0) * 1e6, 1)})
            if self.recorder is not None:
                self.recorder.closed(conn.host_fd)

    # -- the loop ------------------------------------------------------------------------------
    def _watch(self, fileno: int, what) -> None:
        self.ep.register(fileno, select.EPOLLIN)
        self.watched[fileno] = what

    def _unwatch(self, fileno: int) -> None:
        self.ep.unregister(fileno)
        del self.watched[fileno]

    @property
    def channels(self) -> list:
        return [c for c in self.watched.values() if c.__class__ is Conn]

    def poll_once(self, timeout: float = -1) -> bool:
        """Handle one batch of events; False once the command has exited."""
        for fileno, _ in self.ep.poll(timeout):
            what = self.watched.get(fileno)
            if what.__class__ is Conn:
                self._channel(what)
            elif what == "listen":
                self._accept()
            elif what == "files":
                self.drain_releases()
            elif what == "exit":
                self.drain_releases()
                return False
        return True

    def serve(self, pid: int) -> None:
        """Serve until process ``pid`` (the command) exits: its pidfd is one of the events."""
        pidfd = os.pidfd_open(pid)
        self._watch(pidfd, "exit")
        try:
            while self.poll_once():
                pass
        finally:
            self._unwatch(pidfd)
            os.close(pidfd)

    def close(self) -> None:
        for conn in self.by_fileno.values():
            conn.sock.close()
        self.fpoll.close()
        for conn in self.channels:
            conn.sock.close()
        self.ep.close()
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except BlockingIOError:
                return
            conn = Conn(sock)
            try:
                type_, a, _b, _c, payload, fds = conn.recv()   # sent right after connect
            except ClientGone:
                sock.close()
                continue
            if type_ == P.T_CHAN:
                mm = self.mms.get(conn.pid)       # one per process, whichever thread connects
                if mm is None or not mm.alive():
                    mm = self.mms[conn.pid] = ProcessMm(conn.pid)   # it waits for our answer: alive
                conn.mm = mm
                conn.send(P.C_RET)
                self._watch(sock.fileno(), conn)
            elif type_ == P.T_OPEN and len(fds) == 1:
                self._open(conn, payload.decode(errors="replace"), a, fds[0])
            else:
                for fd in fds:
                    os.close(fd)
                sock.close()

    def _open(self, conn: Conn, path: str, flags: int, own_fd: int) -> None:
        """open(2) of an emulated path; ``own_fd`` is the client's end of this connection."""
        ino = os.fstat(own_fd).st_ino
        os.close(own_fd)
        self.drain_releases()
        t0 = time.perf_counter()
        self._set_caller(None)
        self.host.task = conn.pid
        err, host_fd = 0, None
        try:
            host_fd = self.host.open(self.paths.get(path, path))
        except KernelErr as e:
            err = e.errno
        try:
            conn.send(P.C_RET, err)
        except ClientGone:
            err = err or errno.EPIPE
            if host_fd is not None:
                self.host.close(host_fd)
        if err:
            conn.sock.close()
        else:
            self._add_file(conn, host_fd, ino, path)
        self._log({"pid": conn.pid, "fd_kind": _fd_kind(self.host, host_fd) if not err else None,
                   "call": "open", "path": path, "result": -1 if err else 0,
                   "errno": uapi.errno_name(err) if err else None,
                   "us": round((time.perf_counter() - t0) * 1e6, 1)})
        if self.recorder is not None and not err:
            self.recorder.opened(host_fd, path, _fd_kind(self.host, host_fd))

    def _channel(self, conn: Conn) -> None:
        try:
            type_, a, b, number, payload, fds = conn.recv()
        except ClientGone:
            self._unwatch(conn.sock.fileno())
            conn.sock.close()
            return
        try:
            self.drain_releases()
            if type_ == P.T_STAT:
                path = payload.decode(errors="replace")
                ok = self._exists(path)
                conn.send(P.S_DONE, 0 if ok else -1, 0 if ok else errno.ENOENT)
                return
            if len(fds) == 1:
                entry = self.file_of(fds[0])
                if entry is None:
                    conn.send(P.S_DONE, -1, errno.ENOTTY)
                    return
                conn.proved[number] = entry
            else:
                for fd in fds:
                    os.close(fd)
                entry = conn.proved.get(number) if not fds else None
                if entry is None or self.by_ino.get(entry.ino) is not entry:
                    conn.send(P.S_DONE, -1, errno.EBADF)
                    return
            if type_ == P.T_IOCTL:
                self._ioctl(conn, entry, a, b, payload)
            elif type_ == P.T_READ:
                self._rw(conn, entry, "read", a)
            elif type_ == P.T_WRITE:
                self._rw(conn, entry, "write", payload)
            else:
                conn.send(P.S_DONE, -1, errno.EINVAL)
        except ClientGone:
            self._unwatch(conn.sock.fileno())
            conn.sock.close()
        finally:
            self._set_caller(None)

    def _exists(self, path: str) -> bool:
        """Does an emulated path exist?  Asks the model by opening and closing it (an open that
        fails for another reason -- a group already open: EBUSY -- still means the node is there)."""
        self._set_caller(None)
        try:
            fd = self.host.open(self.paths.get(path, path))
        except KernelErr as e:
            return e.errno != errno.ENOENT
        self.host.close(fd)
        return True

    def _set_caller(self, conn: Conn | None, mem=None) -> None:
        if conn is None:
            self.host.mem, self.host.fds, self.host.task = _NO_MEM, _NO_FDS, 0
        else:
            if conn.fds is None:
                conn.fds = ClientFds(self, conn)
            self.host.mem, self.host.fds, self.host.task = mem, conn.fds, conn.pid

    # -- calls ---------------------------------------------------------------------------------
    def _argument(self, entry: Conn, request: int, arg: int, mem: ClientMemory):
        """The bytes the kernel's ioctl entry point copies in, as a buffer for Host.ioctl,
        and the size-field patch to undo (see below)."""
        host_file = self.host.files.get(entry.host_fd)
        if request in khost.ARG_IS_VALUE:       # the kernel uses arg itself as a number
            return bytearray(arg.to_bytes(8, "little", signed=False)), None
        if host_file.__class__ is IommufdCtx and request & 0xFF >= uapi.IOMMUFD_CMD_BASE:
            # iommufd_fops_ioctl: the u32 size, then copy_struct_from_user(min(size, ksize))
            # and check_zeroed_user on the rest.  A size past CAP is zero-checked on the client
            # and the model sees CAP bytes (still past any struct, with a zero tail: the same
            # answer); the original size goes back before the write-back.
            size = int.from_bytes(mem.read(arg, 4), "little")
            if size <= CAP:
                return bytearray(mem.read(arg, max(size, 4))), None
            if not mem.zeroed(arg + CAP, size - CAP):
                buf = bytearray(mem.read(arg, CAP)) + b"\x01"    # a non-zero tail: E2BIG
                buf[:4] = (CAP + 1).to_bytes(4, "little")
                return buf, size
            buf = bytearray(mem.read(arg, CAP))
            buf[:4] = CAP.to_bytes(4, "little")
            return buf, size
        if getattr(host_file, "kind", None) == "group" and request == uapi.VFIO_GROUP_GET_DEVICE_FD:
            # strndup_user(arg, PAGE_SIZE)
            name = mem.read_upto(arg, 4096)
            if b"\0" not in name:
                raise KernelErr(errno.EFAULT if len(name) < 4096 else errno.EINVAL, "device name")
            return bytearray(name[:name.index(b"\0") + 1]), None
        minsz = khost.ARGSZ_MINSZ.get(request)
        if minsz is not None:   # VFIO type1 on an iommufd: max(argsz, minsz) bytes (host.py)
            argsz = int.from_bytes(mem.read(arg, 4), "little")
            return bytearray(mem.read(arg, min(max(argsz, minsz), CAP))), None
        # other VFIO files: the struct head (argsz-led; the handler takes its minsz, checks argsz)
        return bytearray(mem.read_upto(arg, VFIO_HEAD)), None

    def _ioctl(self, conn: Conn, entry: Conn, request: int, arg: int, head: bytes) -> None:
        t0 = time.perf_counter()
        self.calls += 1
        mem = ClientMemory(conn, arg, head)
        self._set_caller(conn, mem)
        before = buf = None
        result, err, detail, responded = -1, 0, "", False
        armed = fault_inject.arm(self.host, conn.pid) if self.host.task_fail_nth else 0
        try:
            buf, real_size = self._argument(entry, request, arg, mem)
            before = bytes(buf)
            result = self.host.ioctl(entry.host_fd, request, buf)
            if real_size is not None:
                buf[:4] = real_size.to_bytes(4, "little")
                before = real_size.to_bytes(4, "little") + before[4:]
        except ClientGone:
            raise
        except KernelErr as e:
            err, detail = e.errno, e.detail
            responded = e.respond   # iommufd_ucmd_respond ran before the error: the struct is copied back
        except EmulationGap as e:
            err, detail = errno.ENOTTY, str(e)
            name = uapi.request_name(request)
            if name not in self.gaps:
                self.gaps.add(name)
                print(f"pyiommufd emulate: {e} (answered ENOTTY)", file=sys.stderr)
        finally:
            if armed:
                fault_inject.disarm(self.host, conn.pid, armed)
        wb = (b"" if (err and not responded) or before is None
              else P.writeback_records(before, bytes(buf[:len(before)])))
        conn.send(P.S_DONE, -1 if err else result, err, payload=wb)
        if self.trace is not None or self.recorder is not None:
            rec = {"pid": conn.pid, "fd_kind": _fd_kind(self.host, entry.host_fd), "call": "ioctl",
                   "ioctl": uapi.request_name(request), "request": request,
                   "in": before, "out": None if err else bytes(buf or b""),
                   "result": -1 if err else result, "errno": uapi.errno_name(err) if err else None,
                   "detail": detail or None, "us": round((time.perf_counter() - t0) * 1e6, 1),
                   "host_fd": entry.host_fd, "path": entry.path}
            if self.recorder is not None:
                self.recorder.ioctl(rec)
            self._log(rec)

    def _rw(self, conn: Conn, entry: Conn, what: str, arg) -> None:
        t0 = time.perf_counter()
        self._set_caller(conn, ClientMemory(conn, 0, b""))
        err, result, data = 0, -1, b""
        try:
            if what == "read":
                data = self.host.read(entry.host_fd, arg)
                result = len(data)
            else:
                result = self.host.write(entry.host_fd, arg)
        except KernelErr as e:
            if isinstance(e, ClientGone):
                raise
            err = e.errno
        conn.send(P.S_DONE, -1 if err else result, err, payload=data)
        self._log({"pid": conn.pid, "fd_kind": _fd_kind(self.host, entry.host_fd), "call": what,
                   "result": -1 if err else result, "errno": uapi.errno_name(err) if err else None,
                   "us": round((time.perf_counter() - t0) * 1e6, 1)})

    def _log(self, rec: dict) -> None:
        if self.trace is not None:
            self.trace(rec)




class _NoMem:
    """host.mem between calls: nothing of any process's memory is reachable."""

    def read(self, addr, length):
        raise KernelErr(errno.EFAULT, "no caller")

    write = read_upto = zeroed = read


class _NoFds(khost.CallerFds):
    def resolve(self, n):
        raise KernelErr(errno.EBADF, "no caller")

    def install(self, host_fd):
        raise KernelErr(errno.EMFILE, "no caller")


_NO_MEM, _NO_FDS = _NoMem(), _NoFds()
