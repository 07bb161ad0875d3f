"""Build the kernel's own iommufd selftests (tools/testing/selftests/iommu) from Debian's
linux-source-6.12, the yardstick ``pyiommufd emulate`` is measured by.

Debian's 6.12.117 copy of iommufd.c / iommufd_utils.h carries lines from a later release
that do not compile against the same tree's uapi headers.  ``ADAPTATION`` is the smallest
change that makes it build and keeps every test case (each edit is listed in
docs/emulate.md).  Headers are taken from the tree and cleaned as scripts/headers_install.sh
does (the machine's own linux-libc-dev is 6.1 and has no iommufd.h).  The result is cached
per source tarball under ~/.cache/pyiommufd/selftest/.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

from ..errors import EnvironmentMissing

DEBIAN_TARBALL = Path("/usr/src/linux-source-6.12.tar.xz")
SELFTEST = "tools/testing/selftests/iommu"
MEMBERS = [f"{SELFTEST}/iommufd.c", f"{SELFTEST}/iommufd_utils.h", f"{SELFTEST}/iommufd_fail_nth.c",
           "tools/testing/selftests/kselftest_harness.h", "tools/testing/selftests/kselftest.h",
           "drivers/iommu/iommufd/iommufd_test.h",
           "include/uapi/linux/iommufd.h", "include/uapi/linux/vfio.h"]
PROGRAMS = ("iommufd", "iommufd_fail_nth")

# (file, text in Debian's 6.12.117 copy, replacement, why).  No test case is removed.
ADAPTATION = [
    (f"{SELFTEST}/iommufd_utils.h",
     '#include "../kselftest_harness.h"\n',
     '#include "../kselftest_harness.h"\n\n'
     '/* pyiommufd: 6.12 has no input data type for IOMMU_GET_HW_INFO; the default is NONE */\n'
     '#define IOMMU_HW_INFO_TYPE_DEFAULT IOMMU_HW_INFO_TYPE_NONE\n',
     "IOMMU_HW_INFO_TYPE_DEFAULT arrived after 6.12: 6.12 callers pass no type (NONE)"),
    (f"{SELFTEST}/iommufd_utils.h",
     "\t\t.in_data_type = data_type,\n", "",
     "struct iommu_hw_info has no in_data_type in 6.12"),
    (f"{SELFTEST}/iommufd_utils.h",
     "\tif (data_type != IOMMU_HW_INFO_TYPE_DEFAULT)\n\t\tcmd.flags |= IOMMU_HW_INFO_FLAG_INPUT_TYPE;\n\n", "",
     "IOMMU_HW_INFO_FLAG_INPUT_TYPE does not exist in 6.12"),
    (f"{SELFTEST}/iommufd.c",
     "\t\ttest_err_get_hw_info(EOPNOTSUPP, self->device_id,\n"
     "\t\t\t\t     IOMMU_HW_INFO_TYPE_SELFTEST + 1,\n"
     "\t\t\t\t     &buffer_exact, sizeof(buffer_exact));\n",
     "\t\t/* pyiommufd: 6.12 has no input data type to get wrong */\n",
     "asks for a wrong input data type, which 6.12 cannot be given"),
    (f"{SELFTEST}/iommufd.c",
     "\t.mock_domains = 1,\n\t.pasid_capable = true,\n",
     "\t.mock_domains = 1,\n\t.pasid_capable = false,\t/* pyiommufd: no PASID mock in 6.12 */\n",
     "the mock has no PASID-capable device in 6.12 (MOCK_FLAGS_DEVICE_PASID)"),
    (f"{SELFTEST}/iommufd.c",
     "\t\ttest_cmd_mock_domain_flags(self->ioas_id,\n\t\t\t\t\t   MOCK_FLAGS_DEVICE_PASID,\n",
     "\t\ttest_cmd_mock_domain_flags(self->ioas_id,\n\t\t\t\t\t   0 /* pyiommufd: never reached */,\n",
     "MOCK_FLAGS_DEVICE_PASID is not in 6.12's iommufd_test.h (unreachable: pasid_capable is false)"),
    (f"{SELFTEST}/iommufd.c",
     "\t\t\tASSERT_EQ(MOCK_PASID_WIDTH, max_pasid);\n",
     "\t\t\tASSERT_EQ(0, max_pasid);\t/* pyiommufd: never reached */\n",
     "MOCK_PASID_WIDTH is not in 6.12's iommufd_test.h (unreachable: pasid_capable is false)"),
]

_VERSION = "1"   # bump when the build recipe changes


def cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pyiommufd" / "selftest"


def _key(tarball: Path) -> str:
    st = tarball.stat()
    h = hashlib.sha256(f"{_VERSION}|{tarball}|{st.st_size}|{st.st_mtime_ns}".encode())
    for f, old, new, _ in ADAPTATION:
        h.update(f"{f}|{old}|{new}".encode())
    return h.hexdigest()[:16]


def headers_install(text: str) -> str:
    """scripts/headers_install.sh's cleaning of one uapi header (the parts these headers need)."""
    text = re.sub(r"([\s(])(__user|__force|__iomem)\s", r"\1", text)
    text = re.sub(r"^#include <linux/compiler(|_types).h>", "", text, flags=re.M)
    text = re.sub(r"(^|[^a-zA-Z0-9])__packed([^a-zA-Z0-9_]|$)", r"\1__attribute__((packed))\2", text)
    text = re.sub(r"#(ifndef|define|endif[ \t]*/[*])[ \t]*_UAPI", r"#\1 ", text)
    return text


def adapt(tree: Path) -> None:
    """Apply ADAPTATION in ``tree``; an edit that does not apply exactly once is an error."""
    for rel, old, new, why in ADAPTATION:
        path = tree / rel
        text = path.read_text()
        if text.count(old) != 1:
            raise EnvironmentMissing(f"selftest adaptation does not apply to {rel} ({why}): "
                                     "this is not Debian's 6.12.117 copy")
        path.write_text(text.replace(old, new))


def build(tarball: Path = DEBIAN_TARBALL, cc: str = "gcc") -> dict[str, Path]:
    """Extract, adapt and compile iommufd and iommufd_fail_nth; return {name: path}.  Cached."""
    if not tarball.exists():
        raise EnvironmentMissing(f"{tarball} is missing: apt-get install linux-source-6.12 "
                                 "(or sh src/pyiommufd/conform/install-deps.sh)")
    if shutil.which(cc) is None:
        raise EnvironmentMissing(f"no C compiler ({cc}): apt-get install gcc libc6-dev")
    out = cache_root() / _key(tarball)
    bins = {p: out / p for p in PROGRAMS}
    if all(b.exists() for b in bins.values()):
        return bins
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with tarfile.open(tarball) as tf:
        top = tf.next().name.split("/")[0]
        for rel in MEMBERS:
            member = tf.getmember(f"{top}/{rel}")
            data = tf.extractfile(member).read()
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(data)
    inc = tmp / "usr/include/linux"
    inc.mkdir(parents=True)
    for h in ("iommufd.h", "vfio.h"):
        inc.joinpath(h).write_text(headers_install((tmp / "include/uapi/linux" / h).read_text()))
    adapt(tmp)
    src = tmp / SELFTEST
    for prog in PROGRAMS:
        cmd = [cc, "-O2", "-D_GNU_SOURCE", "-Wall", "-Wno-unused-function", f"-I{tmp / 'usr/include'}",
               "-o", str(src / prog), str(src / f"{prog}.c"), "-lpthread"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise EnvironmentMissing(f"building the selftest {prog} failed:\n{r.stderr[-3000:]}")
    for prog in PROGRAMS:
        shutil.copy2(src / prog, tmp / prog)
    if out.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return bins


def run_on_emulator(binary: Path, profile: str = "linux-6.12", args: tuple[str, ...] = (),
                    timeout: float = 900) -> tuple[dict[str, str], str]:
    """Run a selftest binary under ``pyiommufd emulate``; ({case: result}, full output)."""
    import sys
    cmd = [sys.executable, "-m", "pyiommufd", "emulate", "--profile", profile, "--", str(binary), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    from ..conform.selftest import parse_tap    # the one kselftest TAP parser, shared with the real run
    return parse_tap(r.stdout), r.stdout + r.stderr
