#!/bin/sh
# Install what pyiommufd.conform needs to build a 6.12 kernel + initramfs and boot it in QEMU.
# Debian bookworm, as root (or via sudo).  Idempotent: apt-get skips what is already installed,
# and `apt-get update` runs only when a package is missing.
set -eu

PACKAGES="
linux-source-6.12
qemu-system-x86
busybox-static
make gcc libc6-dev flex bison bc libelf-dev libssl-dev
cpio xz-utils
python3.11 libpython3.11-stdlib libffi8
"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done

if [ -z "$missing" ]; then
    echo "pyiommufd conform: all packages present"
    exit 0
fi
echo "pyiommufd conform: installing$missing"
$SUDO apt-get update
# shellcheck disable=SC2086 # word splitting of the package list is intended
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends $missing
