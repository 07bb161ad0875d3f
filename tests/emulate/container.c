/* The legacy VFIO container flow on /dev/vfio/vfio, which iommufd provides (CONFIG_IOMMUFD_VFIO_CONTAINER). */
#include <stdio.h>
#include <fcntl.h>
#include <errno.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/vfio.h>
#include <linux/iommufd.h>
int main(void) {
  int c = open("/dev/vfio/vfio", O_RDWR);
  printf("container %d api %d type1v2 %d\n", c >= 0, ioctl(c, VFIO_GET_API_VERSION), ioctl(c, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU));
  int g = open("/dev/vfio/0", O_RDWR);
  int r = ioctl(g, VFIO_GROUP_SET_CONTAINER, &c);
  printf("set_container %d %s\n", r, r ? strerror(errno) : "");
  r = ioctl(c, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU);
  printf("set_iommu %d %s\n", r, r ? strerror(errno) : "");
  int d = ioctl(g, VFIO_GROUP_GET_DEVICE_FD, "gpu");
  printf("device fd %d %s\n", d >= 0, d < 0 ? strerror(errno) : "");
  return 0;
}
