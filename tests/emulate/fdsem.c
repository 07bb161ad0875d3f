/* File semantics of emulated fds (tests/test_emulate.py runs this under pyiommufd emulate).
 * Prints one line per check: "name value"; the test compares them with what a real kernel does. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <linux/iommufd.h>

static int ioas_alloc(int fd)
{
	struct iommu_ioas_alloc a = { .size = sizeof(a) };
	return ioctl(fd, IOMMU_IOAS_ALLOC, &a) ? -errno : (int)a.out_ioas_id;
}

static int destroy(int fd, unsigned id)
{
	struct iommu_destroy d = { .size = sizeof(d), .id = id };
	return ioctl(fd, IOMMU_DESTROY, &d) ? -errno : 0;
}

int main(int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "exec-child")) {
		/* after exec: the inherited fd still names the same iommufd */
		int fd = atoi(argv[2]);
		printf("exec_inherited_ioas %d\n", ioas_alloc(fd));
		return 0;
	}
	int fd = open("/dev/iommu", O_RDWR);
	printf("open %d\n", fd >= 0);
	struct stat st;
	printf("fstat_chr %d\n", fstat(fd, &st) == 0 && S_ISCHR(st.st_mode));
	printf("stat_chr %d\n", stat("/dev/iommu", &st) == 0 && S_ISCHR(st.st_mode));
	printf("access_missing %d\n", access("/dev/vfio/devices/vfio99", F_OK) ? errno : 0);
	printf("ioas1 %d\n", ioas_alloc(fd));

	/* fork: the child shares the file; its close does not close the parent's */
	pid_t pid = fork();
	if (pid == 0) {
		printf("child_ioas %d\n", ioas_alloc(fd));
		fflush(stdout);
		close(fd);
		_exit(0);
	}
	int status;
	waitpid(pid, &status, 0);
	printf("parent_after_child_close %d\n", ioas_alloc(fd));

	/* dup: same file; closing the original keeps it */
	int fd2 = dup(fd);
	close(fd);
	printf("dup_after_close %d\n", ioas_alloc(fd2));
	int fd3 = fcntl(fd2, F_DUPFD_CLOEXEC, 50);
	printf("dupfd_number %d\n", fd3);
	printf("dupfd_cloexec %d\n", (fcntl(fd3, F_GETFD) & FD_CLOEXEC) != 0);
	printf("dupfd_same_ctx %d\n", destroy(fd3, 4));       /* the id fd2 just got */
	dup2(fd2, 40);
	close(fd2);
	close(fd3);

	/* exec: a non-CLOEXEC fd survives and still works */
	pid = fork();
	if (pid == 0) {
		char num[16];
		snprintf(num, sizeof num, "%d", 40);
		execl(argv[0], argv[0], "exec-child", num, (char *)NULL);
		_exit(99);
	}
	waitpid(pid, &status, 0);

	/* closing the last fd releases the ctx: a new open starts ids at 1 again */
	close(40);
	int fd4 = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	printf("fresh_ctx_ioas %d\n", ioas_alloc(fd4));
	printf("open_cloexec %d\n", (fcntl(fd4, F_GETFD) & FD_CLOEXEC) != 0);

	/* bad pointers and sizes */
	printf("efault %d\n", ioctl(fd4, IOMMU_IOAS_ALLOC, (void *)8) ? errno : 0);
	struct iommu_ioas_alloc small = { .size = 4 };
	printf("size_small %d\n", ioctl(fd4, IOMMU_IOAS_ALLOC, &small) ? errno : 0);
	char big[128] = { 0 };
	*(unsigned *)big = sizeof(big);
	printf("size_big_zero %d\n", ioctl(fd4, IOMMU_IOAS_ALLOC, big) ? errno : 0);
	big[100] = 1;
	printf("size_big_tail %d\n", ioctl(fd4, IOMMU_IOAS_ALLOC, big) ? errno : 0);
	/* a size past the end of readable memory: the tail check faults */
	char *page = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	munmap(page + 4096, 4096);
	unsigned *tailp = (unsigned *)(page + 4096 - 16);
	memset(tailp, 0, 16);
	tailp[0] = 1 << 20;
	printf("size_lie_fault %d\n", ioctl(fd4, IOMMU_IOAS_ALLOC, tailp) ? errno : 0);
	struct iommu_ioas_alloc flags = { .size = sizeof(flags), .flags = 1 };
	printf("reserved_flags %d\n", ioctl(fd4, IOMMU_IOAS_ALLOC, &flags) ? errno : 0);
	printf("ebadf_not_ours %d\n", ioctl(0, IOMMU_IOAS_ALLOC, &flags) ? errno : 0);
	printf("read_einval %d\n", read(fd4, big, 8) < 0 ? errno : 0);
	return 0;
}
