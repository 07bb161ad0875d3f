/* pyiommufd emulate: the LD_PRELOAD interposer.
 *
 * Serves /dev/iommu and /dev/vfio/... from the pyiommufd emulator (a Python server on a Unix
 * socket named by $PYIOMMUFD_SOCKET); every other call goes straight to libc.  Pattern of
 * umockdev's libumockdev-preload.c: each libc entry point resolved once with dlsym(RTLD_NEXT),
 * emulated fds recognised, calls on them forwarded, client memory read and written on the
 * server's demand (copy_from_user / copy_to_user) so pointers inside structs work.
 *
 * An emulated file IS a real fd in the program: a SOCK_SEQPACKET connection to the server that
 * carries no data.  Numbering, dup, CLOEXEC and fork are the real kernel's; the server releases
 * the emulated file when the last reference to the socket goes (it reads EOF), exactly when the
 * kernel would release a struct file.  Calls travel on a separate per-thread "call channel";
 * each names its file by passing the fd itself (SCM_RIGHTS), so the server never takes a file,
 * a pid or an address space from a message.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <dirent.h>

/* Protocol: every message is one SEQPACKET record, a header and a payload (emulate/protocol.py). */
struct hdr { uint32_t type, len; int64_t a, b, c; };
enum {
	T_OPEN = 1, T_CHAN = 2, T_IOCTL = 3, T_READ = 4, T_WRITE = 5, T_STAT = 6,
	S_READ = 10, C_DATA = 11, S_WRITE = 12, C_RET = 13, S_GETFD = 14, S_NEWFD = 15, S_ZERO = 16,
	S_DONE = 20,
};
#define MAXMSG (64 * 1024)
#define PREFETCH 256
#define FDMAX 65536

static int (*r_openat)(int, const char *, int, ...);
static int (*r_openat64)(int, const char *, int, ...);
static int (*r_close)(int);
static int (*r_ioctl)(int, unsigned long, ...);
static int (*r_dup)(int);
static int (*r_dup2)(int, int);
static int (*r_dup3)(int, int, int);
static int (*r_fcntl)(int, int, ...);
static ssize_t (*r_read)(int, void *, size_t);
static ssize_t (*r_write)(int, const void *, size_t);
static int (*r_access)(const char *, int);
static int (*r_faccessat)(int, const char *, int, int);
static int (*r_stat)(const char *, struct stat *);
static int (*r_lstat)(const char *, struct stat *);
static int (*r_fstat)(int, struct stat *);
static int (*r_fstatat)(int, const char *, struct stat *, int);
static void *(*r_mmap)(void *, size_t, int, int, int, off_t);

static char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static unsigned char emu[FDMAX];        /* 1: fd known to be an emulated file */
static unsigned gen[FDMAX];             /* bumped whenever an fd number is (re)bound or closed */
static __thread int chan = -1;          /* this thread's call channel */
static __thread pid_t chan_pid;
/* proved[fd] == gen[fd]: this channel has already passed the file at fd (SCM_RIGHTS) and the
 * number still names it; the call then sends the number alone (the server only maps it to
 * the file this connection proved it holds). */
#define PROVED 1024
static __thread unsigned *proved;

#define RESOLVE(name) do { if (!r_##name) r_##name = dlsym(RTLD_NEXT, #name); } while (0)

static void resolve_all(void)
{
	RESOLVE(openat); RESOLVE(openat64); RESOLVE(close);
	RESOLVE(ioctl); RESOLVE(dup); RESOLVE(dup2); RESOLVE(dup3); RESOLVE(fcntl);
	RESOLVE(read); RESOLVE(write); RESOLVE(access); RESOLVE(faccessat);
	RESOLVE(stat); RESOLVE(lstat); RESOLVE(fstat); RESOLVE(fstatat); RESOLVE(mmap);
}

/* Is fd a socket connected to our server?  (getpeername names the server's path.) */
static int probe(int fd)
{
	struct sockaddr_un sa;
	socklen_t len = sizeof(sa);
	if (!sock_path[0] || fd < 0)
		return 0;
	if (getpeername(fd, (struct sockaddr *)&sa, &len) || sa.sun_family != AF_UNIX)
		return 0;
	return strncmp(sa.sun_path, sock_path, sizeof(sa.sun_path)) == 0;
}

static int is_emu(int fd)
{
	if (fd < 0)
		return 0;
	if (fd < FDMAX)
		return emu[fd];
	return probe(fd);
}

static void mark(int fd, int on)
{
	if (fd >= 0 && fd < FDMAX) {
		emu[fd] = on;
		__atomic_add_fetch(&gen[fd], 1, __ATOMIC_RELAXED);
	}
}

__attribute__((constructor)) static void init(void)
{
	const char *p = getenv("PYIOMMUFD_SOCKET");
	resolve_all();
	if (p)
		snprintf(sock_path, sizeof(sock_path), "%s", p);
	/* fds inherited across exec: find the emulated ones. */
	DIR *d = opendir("/proc/self/fd");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		int fd = atoi(e->d_name);
		if (e->d_name[0] != '.' && fd != dirfd(d) && fd < FDMAX && probe(fd))
			mark(fd, 1);
	}
	closedir(d);
}

static int is_emulated_path(const char *path)
{
	size_t n;
	if (!sock_path[0] || !path)
		return 0;
	if (strcmp(path, "/dev/iommu") == 0 || strncmp(path, "/dev/vfio/", 10) == 0)
		return 1;
	/* the emulated kernel's fault injection: /proc/<pid>/task/<tid>/fail-nth */
	n = strlen(path);
	return strncmp(path, "/proc/", 6) == 0 && n > 9 && strcmp(path + n - 9, "/fail-nth") == 0;
}

/* The fault-injection knobs in debugfs (/sys/kernel/debug/fail*): the emulated kernel takes
 * and ignores them (its injection points are the model's), so a program that sets them up, as
 * iommufd_fail_nth does, finds fault injection there.  Relative to an open directory too. */
static int is_fault_knob(int dirfd, const char *path)
{
	if (!sock_path[0] || !path)
		return 0;
	if (strncmp(path, "/sys/kernel/debug/fail", 22) == 0)
		return 1;
	if (path[0] == '/' || strncmp(path, "fail", 4) != 0 || dirfd < 0)
		return 0;
	char link[64], target[64];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", dirfd);
	ssize_t len = readlink(link, target, sizeof(target) - 1);
	if (len < 0)
		return 0;
	target[len] = 0;
	return strcmp(target, "/sys/kernel/debug") == 0;
}

/* ---- messages ---------------------------------------------------------------------- */

static int send_msg(int s, uint32_t type, int64_t a, int64_t b, int64_t c,
		    const void *payload, size_t len, int passfd)
{
	struct hdr h = { type, (uint32_t)len, a, b, c };
	struct iovec iov[2] = { { &h, sizeof(h) }, { (void *)payload, len } };
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = len ? 2 : 1 };
	if (passfd >= 0) {
		memset(cbuf, 0, sizeof(cbuf));
		m.msg_control = cbuf;
		m.msg_controllen = sizeof(cbuf);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &passfd, sizeof(int));
	}
	ssize_t n;
	do
		n = sendmsg(s, &m, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	return n < 0 ? -1 : 0;
}

/* Receive one message into h + buf (MAXMSG); *fd gets a passed fd or -1. */
static int recv_msg(int s, struct hdr *h, char *buf, int *fd, int cloexec)
{
	struct iovec iov[2] = { { h, sizeof(*h) }, { buf, MAXMSG } };
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct msghdr m = { .msg_iov = iov, .msg_iovlen = 2, .msg_control = cbuf,
			    .msg_controllen = sizeof(cbuf) };
	ssize_t n;
	do
		n = recvmsg(s, &m, cloexec ? MSG_CMSG_CLOEXEC : 0);
	while (n < 0 && errno == EINTR);
	if (n < (ssize_t)sizeof(*h))
		return -1;
	*fd = -1;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
			memcpy(fd, CMSG_DATA(c), sizeof(int));
	return 0;
}

static int connect_server(void)
{
	int s = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (s < 0)
		return -1;
	memcpy(sa.sun_path, sock_path, sizeof(sa.sun_path));
	if (connect(s, (struct sockaddr *)&sa, sizeof(sa))) {
		r_close(s);
		return -1;
	}
	return s;
}

static int channel(void)
{
	pid_t pid = getpid();
	if (chan >= 0 && chan_pid == pid)
		return chan;
	if (chan >= 0)          /* inherited from the parent across fork: not ours */
		r_close(chan);
	chan = connect_server();
	if (chan < 0)
		return -1;
	chan_pid = pid;
	if (!proved)
		proved = calloc(PROVED, sizeof(*proved));
	else
		memset(proved, 0, PROVED * sizeof(*proved));   /* a new connection has proved nothing */
	struct hdr h;
	int fd;
	if (send_msg(chan, T_CHAN, 0, 0, 0, NULL, 0, -1))
		goto fail;
	char *buf = malloc(MAXMSG);
	int rc = recv_msg(chan, &h, buf, &fd, 1);
	free(buf);
	if (rc || h.type != C_RET)
		goto fail;
	return chan;
fail:
	r_close(chan);
	chan = -1;
	return -1;
}

/* Copy from / to our own memory without crashing on a bad pointer: EFAULT comes back. */
static ssize_t self_read(void *dst, uint64_t addr, size_t len)
{
	struct iovec l = { dst, len }, r = { (void *)(uintptr_t)addr, len };
	return process_vm_readv(getpid(), &l, 1, &r, 1, 0);
}

static ssize_t self_write(uint64_t addr, const void *src, size_t len)
{
	struct iovec l = { (void *)src, len }, r = { (void *)(uintptr_t)addr, len };
	return process_vm_writev(getpid(), &l, 1, &r, 1, 0);
}

/* One call: send it, then serve the server's memory and fd requests until S_DONE.
 * Returns the call's result; errno set from the server's answer. */
static int64_t call(uint32_t type, int fd, int64_t a, int64_t b, const void *payload, size_t len,
		    char **out, size_t *outlen)
{
	int s = channel();
	if (s < 0) {
		errno = EIO;
		return -1;
	}
	int pass = fd;
	unsigned g = 0;
	if (fd >= 0 && fd < PROVED && proved) {
		g = __atomic_load_n(&gen[fd], __ATOMIC_RELAXED);
		if (proved[fd] == g)
			pass = -1;
	}
	if (send_msg(s, type, a, b, fd, payload, len, pass)) {
		int e = errno;
		r_close(chan);
		chan = -1;
		errno = e == EBADF ? EBADF : EIO;
		return -1;
	}
	char *buf = malloc(MAXMSG);
	if (!buf) {
		errno = ENOMEM;
		return -1;
	}
	int64_t ret = -1;
	for (;;) {
		struct hdr h;
		int rfd;
		if (recv_msg(s, &h, buf, &rfd, 1)) {
			r_close(chan);
			chan = -1;
			errno = EIO;
			break;
		}
		if (h.type == S_READ) {         /* copy_from_user; c: a short read is fine */
			size_t n = (size_t)h.b > MAXMSG ? MAXMSG : (size_t)h.b;
			ssize_t got = self_read(buf, (uint64_t)h.a, n);
			if (got < 0 && h.c)
				got = 0;
			if (got < 0 || (!h.c && (size_t)got != n))
				send_msg(s, C_DATA, EFAULT, 0, 0, NULL, 0, -1);
			else
				send_msg(s, C_DATA, 0, 0, 0, buf, (size_t)got, -1);
		} else if (h.type == S_WRITE) { /* copy_to_user */
			ssize_t put = self_write((uint64_t)h.a, buf, h.len);
			send_msg(s, C_RET, put == (ssize_t)h.len ? 0 : EFAULT, 0, 0, NULL, 0, -1);
		} else if (h.type == S_ZERO) {  /* check_zeroed_user */
			uint64_t addr = (uint64_t)h.a, left = (uint64_t)h.b;
			int64_t err = 0, zero = 1;
			while (left && zero && !err) {
				size_t n = left > MAXMSG ? MAXMSG : left;
				if (self_read(buf, addr, n) != (ssize_t)n)
					err = EFAULT;
				for (size_t i = 0; i < n && !err; i++)
					if (buf[i]) {
						zero = 0;
						break;
					}
				addr += n;
				left -= n;
			}
			send_msg(s, C_RET, err, zero, 0, NULL, 0, -1);
		} else if (h.type == S_GETFD) { /* fdget: pass the file itself */
			int n = (int)h.a;
			if (n < 0 || r_fcntl(n, F_GETFD) < 0)
				send_msg(s, C_RET, EBADF, 0, 0, NULL, 0, -1);
			else
				send_msg(s, C_RET, 0, 0, 0, NULL, 0, n);
		} else if (h.type == S_NEWFD) { /* fd_install: the kernel's lowest free number */
			if (rfd >= 0) {
				if (!h.a)        /* not O_CLOEXEC */
					r_fcntl(rfd, F_SETFD, 0);
				mark(rfd, 1);
			}
			send_msg(s, C_RET, rfd >= 0 ? 0 : EMFILE, rfd, 0, NULL, 0, -1);
		} else if (h.type == S_DONE) {
			if (pass >= 0 && pass < PROVED && proved && h.b != EBADF && h.b != ENOTTY)
				proved[pass] = g;
			/* payload: write-back records (u32 offset, u32 len, bytes) into `out`'s user copy,
			 * or data for read() */
			ret = h.a;
			if (h.b) {
				errno = (int)h.b;
				ret = -1;
			}
			if (out) {
				*out = buf;
				*outlen = h.len;
				return ret;
			}
			break;
		}
	}
	free(buf);
	return ret;
}

/* ---- open / close / dup ----------------------------------------------------------------- */

static int emu_open(const char *path, int flags)
{
	int s = connect_server();
	if (s < 0) {
		errno = ENXIO;
		return -1;
	}
	struct hdr h;
	int rfd;
	char *buf = malloc(MAXMSG);
	int ok = buf && !send_msg(s, T_OPEN, flags, 0, 0, path, strlen(path), s) &&
		 !recv_msg(s, &h, buf, &rfd, 1) && h.type == C_RET;
	free(buf);
	if (!ok) {
		r_close(s);
		errno = EIO;
		return -1;
	}
	if (h.a) {
		r_close(s);
		errno = (int)h.a;
		return -1;
	}
	if (!(flags & O_CLOEXEC))
		r_fcntl(s, F_SETFD, 0);
	mark(s, 1);
	return s;
}

#define OPEN_MODE(flags) \
	mode_t mode = 0; \
	if ((flags) & (O_CREAT | __O_TMPFILE)) { va_list ap; va_start(ap, flags); mode = va_arg(ap, mode_t); va_end(ap); }

/* open(path) is openat(AT_FDCWD, path): one place decides what is emulated */
int open(const char *path, int flags, ...)
{
	OPEN_MODE(flags);
	return openat(AT_FDCWD, path, flags, mode);
}

int open64(const char *path, int flags, ...)
{
	OPEN_MODE(flags);
	return openat64(AT_FDCWD, path, flags, mode);
}

int openat(int dirfd, const char *path, int flags, ...)
{
	OPEN_MODE(flags);
	if (is_emulated_path(path))
		return emu_open(path, flags);
	RESOLVE(openat);
	if (is_fault_knob(dirfd, path))
		return r_openat(AT_FDCWD, "/dev/null", (flags & O_CLOEXEC) | O_WRONLY);
	return r_openat(dirfd, path, flags, mode);
}

int openat64(int dirfd, const char *path, int flags, ...)
{
	OPEN_MODE(flags);
	if (is_emulated_path(path))
		return emu_open(path, flags);
	RESOLVE(openat64);
	if (is_fault_knob(dirfd, path))
		return r_openat64(AT_FDCWD, "/dev/null", (flags & O_CLOEXEC) | O_WRONLY);
	return r_openat64(dirfd, path, flags, mode);
}

/* _FORTIFY_SOURCE entry points */
int __open_2(const char *path, int flags) { return open(path, flags); }
int __open64_2(const char *path, int flags) { return open64(path, flags); }
int __openat_2(int dirfd, const char *path, int flags) { return openat(dirfd, path, flags); }
int __openat64_2(int dirfd, const char *path, int flags) { return openat64(dirfd, path, flags); }

int close(int fd)
{
	RESOLVE(close);
	if (fd == chan && chan >= 0 && chan_pid == getpid())
		chan = -1;      /* the program closed our channel's number: make a new one next time */
	mark(fd, 0);
	return r_close(fd);
}

static void forget_range(unsigned first, unsigned last)
{
	for (unsigned fd = first; fd <= last && fd < FDMAX; fd++)
		if (emu[fd])
			mark((int)fd, 0);
	if (chan >= 0 && (unsigned)chan >= first && (unsigned)chan <= last)
		chan = -1;
}

int close_range(unsigned first, unsigned last, int flags)
{
	static int (*r_close_range)(unsigned, unsigned, int);
	RESOLVE(close_range);
	int r = r_close_range(first, last, flags);
	if (r == 0 && !(flags & 4 /* CLOSE_RANGE_CLOEXEC */))
		forget_range(first, last);
	return r;
}

void closefrom(int lowfd)
{
	static void (*r_closefrom)(int);
	RESOLVE(closefrom);
	r_closefrom(lowfd);
	forget_range(lowfd < 0 ? 0 : (unsigned)lowfd, ~0u);
}

static int dup_result(int oldfd, int newfd)
{
	if (newfd >= 0) {
		if (newfd == chan)
			chan = -1;
		mark(newfd, is_emu(oldfd));
	}
	return newfd;
}

int dup(int fd) { RESOLVE(dup); return dup_result(fd, r_dup(fd)); }

int dup2(int fd, int fd2)
{
	RESOLVE(dup2);
	if (fd2 == chan && fd != fd2)
		chan = -1;
	return dup_result(fd, r_dup2(fd, fd2));
}

int dup3(int fd, int fd2, int flags)
{
	RESOLVE(dup3);
	if (fd2 == chan && fd != fd2)
		chan = -1;
	return dup_result(fd, r_dup3(fd, fd2, flags));
}

int fcntl(int fd, int cmd, ...)
{
	va_list ap;
	va_start(ap, cmd);
	void *arg = va_arg(ap, void *);
	va_end(ap);
	RESOLVE(fcntl);
	int r = r_fcntl(fd, cmd, arg);
	if (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)
		dup_result(fd, r);
	return r;
}
int fcntl64(int fd, int cmd, ...) __attribute__((alias("fcntl")));

/* ---- ioctl / read / write ----------------------------------------------------------------- */

int ioctl(int fd, unsigned long request, ...)
{
	va_list ap;
	va_start(ap, request);
	void *argp = va_arg(ap, void *);
	va_end(ap);
	RESOLVE(ioctl);
	if (((request >> 8) & 0xff) != ';' || !(is_emu(fd) || (probe(fd) && (mark(fd, 1), 1))))
		return r_ioctl(fd, request, argp);
	/* Prefetch the start of the argument (the server asks for the rest if it needs more). */
	char pre[PREFETCH];
	uint64_t arg = (uint64_t)(uintptr_t)argp;
	ssize_t n = arg >= 4096 ? self_read(pre, arg, sizeof(pre)) : -1;
	if (n < 0) {            /* the page may end inside the prefetch: take what is readable */
		n = 0;
		if (arg >= 4096) {
			size_t room = 4096 - (arg & 4095);
			if (room < sizeof(pre) && self_read(pre, arg, room) == (ssize_t)room)
				n = room;
		}
	}
	char *wb = NULL;
	size_t wblen = 0;
	int64_t r = call(T_IOCTL, fd, (int64_t)request, (int64_t)arg, pre, (size_t)n, &wb, &wblen);
	int err = errno;
	/* Apply the write-back records: the kernel's copy_to_user of the struct. */
	for (size_t off = 0; off + 8 <= wblen;) {
		uint32_t at, len;
		memcpy(&at, wb + off, 4);
		memcpy(&len, wb + off + 4, 4);
		if (off + 8 + len > wblen)
			break;
		if (self_write(arg + at, wb + off + 8, len) != (ssize_t)len) {
			free(wb);
			errno = EFAULT;
			return -1;
		}
		off += 8 + len;
	}
	free(wb);
	errno = err;
	return (int)r;
}

ssize_t read(int fd, void *buf, size_t count)
{
	RESOLVE(read);
	if (!is_emu(fd))
		return r_read(fd, buf, count);
	size_t got = 0;
	char *data = NULL;
	int64_t r = call(T_READ, fd, (int64_t)(count > MAXMSG ? MAXMSG : count), 0, NULL, 0, &data, &got);
	if (r < 0)
		return -1;
	ssize_t put = self_write((uint64_t)(uintptr_t)buf, data, got);
	free(data);
	if (put != (ssize_t)got) {
		errno = EFAULT;
		return -1;
	}
	return (ssize_t)got;
}

ssize_t write(int fd, const void *buf, size_t count)
{
	RESOLVE(write);
	if (!is_emu(fd))
		return r_write(fd, buf, count);
	if (count > MAXMSG)
		count = MAXMSG;
	char *data = malloc(count ? count : 1);
	if (!data) {
		errno = ENOMEM;
		return -1;
	}
	if (self_read(data, (uint64_t)(uintptr_t)buf, count) != (ssize_t)count) {
		free(data);
		errno = EFAULT;
		return -1;
	}
	ssize_t r = (ssize_t)call(T_WRITE, fd, 0, 0, data, count, NULL, NULL);
	free(data);
	return r;
}

/* pread/pwrite: files of the emulated kernel ignore the offset (fail-nth is read from 0) */
ssize_t pread(int fd, void *buf, size_t count, off_t off)
{
	static ssize_t (*r_pread)(int, void *, size_t, off_t);
	RESOLVE(pread);
	return is_emu(fd) ? read(fd, buf, count) : r_pread(fd, buf, count, off);
}
ssize_t pread64(int fd, void *buf, size_t count, off_t off) __attribute__((alias("pread")));

ssize_t pwrite(int fd, const void *buf, size_t count, off_t off)
{
	static ssize_t (*r_pwrite)(int, const void *, size_t, off_t);
	RESOLVE(pwrite);
	return is_emu(fd) ? write(fd, buf, count) : r_pwrite(fd, buf, count, off);
}
ssize_t pwrite64(int fd, const void *buf, size_t count, off_t off) __attribute__((alias("pwrite")));

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
	RESOLVE(mmap);
	if (fd >= 0 && !(flags & MAP_ANONYMOUS) && is_emu(fd)) {
		errno = ENODEV;         /* no emulated file has mmap (iommufd has none in 6.12) */
		return MAP_FAILED;
	}
	return r_mmap(addr, len, prot, flags, fd, off);
}
void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) __attribute__((alias("mmap")));

/* ---- stat / access on the device paths ----------------------------------------------------- */

/* Ask the server whether an emulated path exists: 0 or an errno. */
static int emu_exists(const char *path)
{
	int64_t r = call(T_STAT, -1, 0, 0, path, strlen(path), NULL, NULL);
	return r < 0 ? errno : 0;
}

static void fake_chr(struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_mode = S_IFCHR | 0666;
	st->st_rdev = makedev(10, 123);
	st->st_nlink = 1;
	st->st_blksize = 4096;
}

static int stat_path(const char *path, struct stat *st)
{
	int e = emu_exists(path);
	if (e) {
		errno = e;
		return -1;
	}
	fake_chr(st);
	return 0;
}

int access(const char *path, int mode)
{
	RESOLVE(access);
	if (is_emulated_path(path)) {
		int e = emu_exists(path);
		if (e) {
			errno = e;
			return -1;
		}
		return (mode & X_OK) ? (errno = EACCES, -1) : 0;
	}
	return r_access(path, mode);
}

int faccessat(int dirfd, const char *path, int mode, int flags)
{
	RESOLVE(faccessat);
	if (is_emulated_path(path))
		return access(path, mode);
	return r_faccessat(dirfd, path, mode, flags);
}

int stat(const char *path, struct stat *st)
{
	RESOLVE(stat);
	return is_emulated_path(path) ? stat_path(path, st) : r_stat(path, st);
}
/* x86-64 and arm64: struct stat64 is struct stat */
int stat64(const char *path, struct stat64 *st) { return stat(path, (struct stat *)st); }

int lstat(const char *path, struct stat *st)
{
	RESOLVE(lstat);
	return is_emulated_path(path) ? stat_path(path, st) : r_lstat(path, st);
}
int lstat64(const char *path, struct stat64 *st) { return lstat(path, (struct stat *)st); }

int fstatat(int dirfd, const char *path, struct stat *st, int flags)
{
	RESOLVE(fstatat);
	if (is_emulated_path(path))
		return stat_path(path, st);
	if (!path[0] && (flags & AT_EMPTY_PATH) && is_emu(dirfd)) {
		fake_chr(st);
		return 0;
	}
	return r_fstatat(dirfd, path, st, flags);
}
int fstatat64(int dirfd, const char *path, struct stat64 *st, int flags)
{
	return fstatat(dirfd, path, (struct stat *)st, flags);
}

int fstat(int fd, struct stat *st)
{
	RESOLVE(fstat);
	if (is_emu(fd)) {
		fake_chr(st);
		return 0;
	}
	return r_fstat(fd, st);
}
int fstat64(int fd, struct stat64 *st) { return fstat(fd, (struct stat *)st); }
