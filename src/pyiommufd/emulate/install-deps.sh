#!/bin/sh
# What `make test` needs for the kernel's iommufd selftest on the emulator: Debian's
# linux-source-6.12 (the selftest's source) and a C compiler.  Idempotent; as root (or sudo).
# Without root and without the package, the selftest tests skip and say so.
set -eu
PACKAGES="linux-source-6.12 gcc libc6-dev xz-utils"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
    echo "pyiommufd: the selftest needs$missing (apt-get install as root); its tests will skip" >&2
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "pyiommufd: installing$missing (for the kernel's iommufd selftest)"
$SUDO apt-get update -qq
# shellcheck disable=SC2086
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
