/* What the 2023 iommufd thread argued about, as a VMM does it: two devices, one behind a
 * VT-d unit without Snoop Control, each attached to one IOAS with the kernel's auto-domain,
 * in the order given.  Prints the HWPT each attach landed in.
 *
 *   cc $(pyiommufd emulate --cflags) -o two_devices examples/two_devices.c
 *   pyiommufd emulate --profile linux-6.12 --system examples/two-devices.toml -- ./two_devices gpu nic
 *   pyiommufd emulate --profile linux-6.12 --system examples/two-devices.toml -- ./two_devices -r gpu nic
 *
 * Arguments: the devices' names in [[devices]] order (device i is /dev/vfio/devices/vfio<i>;
 * before 6.6 its group is /dev/vfio/<i> and the name is what VFIO_GROUP_GET_DEVICE_FD takes);
 * -r attaches them in reverse order.  Linux 6.6+ uses the VFIO device cdevs; without them
 * (6.2-6.5) the VFIO group path with the iommufd as the container, where the kernel attaches
 * the device to the compat IOAS when it is opened and no HWPT id is visible.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/iommufd.h>
#include <linux/vfio.h>

static void fail(const char *what)
{
	printf("%s: %s\n", what, strerror(errno));
}

int main(int argc, char **argv)
{
	int reverse = argc > 1 && !strcmp(argv[1], "-r");
	char **names = argv + 1 + reverse;
	int n = argc - 1 - reverse;
	if (n != 2) {
		fprintf(stderr, "usage: %s [-r] DEV0 DEV1\n", argv[0]);
		return 2;
	}
	setvbuf(stdout, NULL, _IONBF, 0);
	int iommufd = open("/dev/iommu", O_RDWR | O_CLOEXEC);
	if (iommufd < 0) {
		fail("open /dev/iommu");
		return 1;
	}
	struct iommu_ioas_alloc alloc = { .size = sizeof(alloc) };
	if (ioctl(iommufd, IOMMU_IOAS_ALLOC, &alloc))
		fail("IOMMU_IOAS_ALLOC");
	printf("ioas %u\n", alloc.out_ioas_id);
	void *buf = mmap(NULL, 0x2000, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct iommu_ioas_map map = {
		.size = sizeof(map), .ioas_id = alloc.out_ioas_id, .user_va = (uintptr_t)buf,
		.length = 0x2000, .iova = 0x100000,
		.flags = IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
	};
	if (ioctl(iommufd, IOMMU_IOAS_MAP, &map))
		fail("IOMMU_IOAS_MAP");
	int cdevs = access("/dev/vfio/devices/vfio0", F_OK) == 0;
	for (int k = 0; k < 2; k++) {
		int i = reverse ? 1 - k : k;
		char path[64];
		if (cdevs) {
			snprintf(path, sizeof(path), "/dev/vfio/devices/vfio%d", i);
			int fd = open(path, O_RDWR | O_CLOEXEC);
			struct vfio_device_bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = iommufd };
			if (fd < 0 || ioctl(fd, VFIO_DEVICE_BIND_IOMMUFD, &bind)) {
				fail(path);
				continue;
			}
			struct vfio_device_attach_iommufd_pt attach = { .argsz = sizeof(attach),
									.pt_id = alloc.out_ioas_id };
			if (ioctl(fd, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &attach)) {
				printf("%s dev %u attach: %s\n", names[i], bind.out_devid, strerror(errno));
				continue;
			}
			printf("%s dev %u hwpt %u\n", names[i], bind.out_devid, attach.pt_id);
		} else {
			snprintf(path, sizeof(path), "/dev/vfio/%d", i);
			int group = open(path, O_RDWR | O_CLOEXEC);
			struct iommu_vfio_ioas set = { .size = sizeof(set), .ioas_id = alloc.out_ioas_id,
						       .op = IOMMU_VFIO_IOAS_SET };
			if (group < 0 || ioctl(iommufd, IOMMU_VFIO_IOAS, &set) ||
			    ioctl(group, VFIO_GROUP_SET_CONTAINER, &iommufd)) {
				fail(path);
				continue;
			}
			int dev = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, names[i]);
			if (dev < 0)
				printf("%s attach: %s\n", names[i], strerror(errno));
			else
				printf("%s attached (group path: no HWPT id in the uAPI)\n", names[i]);
		}
	}
	return 0;
}
