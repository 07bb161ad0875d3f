/* pyiommufd bench: IOMMU_IOAS_ALLOC + IOMMU_DESTROY in a loop, timed, for `pyiommufd emulate`.
 * Prints "N SECONDS" (wall, monotonic). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/ioctl.h>
#include <linux/iommufd.h>
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 20000;
    int fd = open("/dev/iommu", O_RDWR);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (long i = 0; i < n / 2; i++) {
        struct iommu_ioas_alloc al = { .size = sizeof(al) };
        if (ioctl(fd, IOMMU_IOAS_ALLOC, &al)) return 1;
        struct iommu_destroy d = { .size = sizeof(d), .id = al.out_ioas_id };
        if (ioctl(fd, IOMMU_DESTROY, &d)) return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    double s = (b.tv_sec - a.tv_sec) + (b.tv_nsec - a.tv_nsec) / 1e9;
    printf("%ld %.6f\n", n, s);
    return 0;
}
