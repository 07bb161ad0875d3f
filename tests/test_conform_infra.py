"""Unit tests of the QEMU conformance infrastructure (pyiommufd.conform.build / qemu).

Pure Python and fast: nothing here builds a kernel or boots QEMU."""

import io
import stat
import struct

import pytest

from pyiommufd.conform import build, probe_agent, qemu
from pyiommufd.conform.build import (MARK_BEGIN, MARK_END, MARK_RC, MARK_STDERR_BEGIN,
                                     MARK_STDERR_END)

# ----------------------------------------------------------------------------- config fragment


def test_parse_config_set_unset_and_comments():
    text = "# comment\n\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"str\"\nCONFIG_D=0x10\n"
    assert build.parse_config(text, strict=True) == {
        "CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": '"str"', "CONFIG_D": "0x10"}


@pytest.mark.parametrize("text", ["CONFIG_A y\n", "INTEL_IOMMU=y\n", "CONFIG_A=y\nCONFIG_A=n\n"])
def test_parse_config_strict_rejects_typos(text):
    with pytest.raises(ValueError, match="line"):
        build.parse_config(text, strict=True)


def test_parse_config_lenient_for_dot_config():
    assert build.parse_config("garbage\nCONFIG_A=y\n") == {"CONFIG_A": "y"}


def test_verify_config_names_dropped_options():
    required = {"CONFIG_A": "y", "CONFIG_B": "n", "CONFIG_C": "y", "CONFIG_D": "n"}
    actual = {"CONFIG_A": "y", "CONFIG_B": "y", "CONFIG_D": "n"}
    assert build.verify_config(required, actual) == [
        "CONFIG_B: wanted n, got y", "CONFIG_C: wanted y, got n"]


def test_verify_config_absent_means_n():
    assert build.verify_config({"CONFIG_X": "n"}, {}) == []


def test_fragment_is_strict_and_has_the_options_spec_9_needs():
    opts = build.parse_config(build.FRAGMENT.read_text(), strict=True)
    for name in ("64BIT", "PCI", "PCI_MSI", "ACPI", "X86_IO_APIC", "X86_X2APIC", "INTEL_IOMMU",
                 "IRQ_REMAP", "IOMMUFD", "IOMMUFD_TEST", "DEBUG_KERNEL", "FAULT_INJECTION",
                 "RUNTIME_TESTING_MENU", "VFIO", "VFIO_GROUP", "VFIO_PCI", "VFIO_DEVICE_CDEV",
                 "IOMMUFD_VFIO_CONTAINER", "INTEL_IOMMU_DEBUGFS", "IOMMU_DEBUGFS", "DEBUG_FS",
                 "DEVTMPFS", "BLK_DEV_INITRD", "BINFMT_ELF", "BINFMT_SCRIPT", "PROC_FS", "SYSFS",
                 "TTY", "SERIAL_8250", "SERIAL_8250_CONSOLE"):
        assert opts.get(f"CONFIG_{name}") == "y", name
    assert opts["CONFIG_VFIO_CONTAINER"] == "n"


def test_kernel_key_follows_fragment_and_tarball(tmp_path):
    tarball = tmp_path / "linux-source-6.12.tar.xz"
    tarball.write_bytes(b"x" * 10)
    key = build.kernel_key(b"CONFIG_A=y\n", tarball)
    assert key == build.kernel_key(b"CONFIG_A=y\n", tarball)
    assert key != build.kernel_key(b"CONFIG_A=n\n", tarball)
    tarball.write_bytes(b"x" * 11)
    assert key != build.kernel_key(b"CONFIG_A=y\n", tarball)


# ----------------------------------------------------------------------------- initramfs


def test_job_module_selection():
    assert build.job_module({}) == "pyiommufd.conform.agent"
    assert build.job_module({"agent": "probe"}) == "pyiommufd.conform.probe_agent"
    assert build.job_module({"module": "a.b_c", "agent": "probe"}) == "a.b_c"


@pytest.mark.parametrize("module", ["a b", "a;poweroff", "", "1a", "a..b", 3])
def test_job_module_rejects_non_module_names(module):
    with pytest.raises(build.BuildError):
        build.job_module({"module": module})


def test_render_init_runs_module_and_prints_markers():
    init = build.render_init("x.y")
    assert init.startswith("#!/bin/sh\n")
    assert "-m x.y /job.json" in init
    assert "PYTHONPATH=/opt/pyiommufd-src" in init
    for mark in (MARK_BEGIN, MARK_END, MARK_STDERR_BEGIN, MARK_STDERR_END, MARK_RC):
        assert f"echo {mark}" in init
    assert "@" not in init
    assert init.index(MARK_RC) < init.index("poweroff -f")
    # SeaBIOS leaves escape codes without a newline on the console: a bare echo ends that line
    # so the first marker starts a line of its own.
    lines = init.splitlines()
    before = lines[lines.index(f"echo {MARK_STDERR_BEGIN}") - 1]
    assert before.split("#")[0].strip() == "echo"


def _read_cpio(data: bytes):
    """Minimal newc reader: {name: (mode, data, (rdevmajor, rdevminor))}."""
    entries, pos = {}, 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        f = [int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = data[pos + 110:pos + 110 + namesize - 1].decode()
        pos += 110 + namesize
        pos += -pos % 4
        body = data[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name == "TRAILER!!!":
            assert pos == len(data)
            return entries
        entries[name] = (f[1], body, (f[9], f[10]))


def test_write_cpio_round_trip(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin/busybox").write_bytes(b"\x7fELF12345")
    (tmp_path / "bin/busybox").chmod(0o755)
    (tmp_path / "bin/sh").symlink_to("busybox")
    (tmp_path / "dev").mkdir()
    (tmp_path / "init").write_text("#!/bin/sh\n")
    out = io.BytesIO()
    build.write_cpio(tmp_path, out, nodes=(("dev/console", stat.S_IFCHR | 0o600, 5, 1),))
    entries = _read_cpio(out.getvalue())
    names = list(entries)
    assert names.index("bin") < names.index("bin/busybox")  # parents first
    assert names[-1] == "dev/console"
    mode, body, _ = entries["bin/busybox"]
    assert stat.S_ISREG(mode) and mode & 0o777 == 0o755 and body == b"\x7fELF12345"
    mode, body, _ = entries["bin/sh"]
    assert stat.S_ISLNK(mode) and body == b"busybox"
    assert stat.S_ISDIR(entries["dev"][0])
    mode, _, rdev = entries["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == (5, 1)


# ----------------------------------------------------------------------------- QEMU command line


def _devices(cmd):
    return [cmd[i + 1] for i, a in enumerate(cmd) if a == "-device"]


@pytest.mark.parametrize("snoop,word", [(True, "on"), (False, "off")])
def test_qemu_command_intel_iommu(snoop, word):
    cmd = qemu.qemu_command("bz", "rd", snoop_control=snoop, n_devices=2, behind_bridge=False)
    assert cmd[:7] == ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-machine", "q35"]
    for flag in ("-nographic", "-no-reboot"):
        assert flag in cmd
    assert cmd[cmd.index("-nic") + 1] == "none"
    assert cmd[cmd.index("-kernel") + 1] == "bz" and cmd[cmd.index("-initrd") + 1] == "rd"
    assert cmd[cmd.index("-append") + 1] == "console=ttyS0 intel_iommu=on panic=-1 quiet no_timer_check"
    assert _devices(cmd) == [
        f"intel-iommu,intremap=on,caching-mode=on,snoop-control={word}", "edu", "edu"]


def test_qemu_command_mock_has_no_iommu():
    cmd = qemu.qemu_command("bz", "rd", snoop_control=None, n_devices=0, behind_bridge=False)
    assert _devices(cmd) == []
    assert not any("intel-iommu" in a for a in cmd)


def test_qemu_command_behind_bridge():
    cmd = qemu.qemu_command("bz", "rd", snoop_control=True, n_devices=3, behind_bridge=True)
    devs = _devices(cmd)
    assert devs[0].startswith("intel-iommu,")
    assert devs[1] == "pci-bridge,id=bridge0,chassis_nr=1"
    assert devs[2:] == ["edu,bus=bridge0,addr=0x1", "edu,bus=bridge0,addr=0x2",
                        "edu,bus=bridge0,addr=0x3"]


def test_qemu_command_rejects_negative_device_count():
    with pytest.raises(ValueError):
        qemu.qemu_command("bz", "rd", snoop_control=True, n_devices=-1, behind_bridge=False)


# ----------------------------------------------------------------------------- console parsing


def _console(out, err="", rc=0):
    lines = ["[    0.5] boot noise", MARK_STDERR_BEGIN, *err.splitlines(), MARK_STDERR_END,
             MARK_BEGIN, *out.splitlines(), MARK_END, f"{MARK_RC}{rc}===",
             "[    3.1] reboot: Power down"]
    return "\r\n".join(lines) + "\r\n"  # the serial line sends CRLF


def test_parse_console_extracts_output_stderr_rc():
    out, err, rc = qemu.parse_console(_console('{"a": 1,\n "b": 2}', "warn", 3))
    assert (out, err, rc) == ('{"a": 1,\n "b": 2}', "warn", 3)


def test_parse_console_empty_output():
    assert qemu.parse_console(_console("")) == ("", "", 0)


def test_parse_console_marker_must_be_a_whole_line():
    console = f"echo {MARK_BEGIN}\r\n"  # e.g. the init script echoed by a shell trace
    with pytest.raises(qemu.BootError, match="markers not found"):
        qemu.parse_console(console)


def test_parse_console_missing_end_marker_shows_tail():
    with pytest.raises(qemu.BootError) as exc:
        qemu.parse_console(f"Kernel panic - not syncing\r\n{MARK_BEGIN}\r\n{{\r\n")
    assert "Kernel panic" in str(exc.value)
    assert exc.value.console.startswith("Kernel panic")


def test_parse_console_missing_rc():
    with pytest.raises(qemu.BootError, match="exit status"):
        qemu.parse_console(f"{MARK_BEGIN}\n{{}}\n{MARK_END}\n")


def test_rc_line_regex_needs_complete_line():
    assert qemu._RC_LINE.search(f"{MARK_RC}0===\r\n".encode())
    assert not qemu._RC_LINE.search(f"{MARK_RC}0==".encode())


# ----------------------------------------------------------------------------- probe agent


def test_probe_ioctl_numbers_and_struct_sizes():
    assert probe_agent.IOMMU_DESTROY == 0x3B80
    assert probe_agent.IOMMU_IOAS_ALLOC == 0x3B81
    assert probe_agent.IOMMU_IOAS_MAP == 0x3B85
    assert probe_agent.IOMMU_GET_HW_INFO == 0x3B8A
    assert probe_agent.IOMMU_TEST_CMD == 0x3BA0
    assert probe_agent.VFIO_DEVICE_BIND_IOMMUFD == 0x3B76
    assert probe_agent.VFIO_DEVICE_ATTACH_IOMMUFD_PT == 0x3B77
    sizes = {"DESTROY": 8, "IOAS_ALLOC": 12, "IOAS_MAP": 40, "HW_INFO": 40, "HW_INFO_VTD": 24,
             "BIND": 16, "ATTACH": 12, "TEST_CMD": 72}
    for name, size in sizes.items():
        assert struct.calcsize(getattr(probe_agent, name)) == size, name


def test_probe_errno_name_uses_kernel_spelling():
    import errno
    assert probe_agent.errno_name(errno.EOPNOTSUPP) == "EOPNOTSUPP"
    assert probe_agent.errno_name(errno.EBUSY) == "EBUSY"


def test_probe_page_table_dump_parsing(tmp_path, monkeypatch):
    bdf = "0000:00:03.0"
    (tmp_path / bdf).mkdir()
    (tmp_path / bdf / "domain_translation_struct").write_text(
        "Device 0000:00:03.0 @0x1234000\n"
        "IOVA_PFN\t\tPML5E\tPML4E\tPDPE\tPDE\tPTE\n"
        "0x0000000000100 |\t0x0000000000000000\t0x0000000001234003\t0x0000000001235003"
        "\t0x0000000001236003\t0x0000000004567803\n"
        "0x0000000000101 |\t0x0000000000000000\t0x0000000001234003\t0x0000000001235003"
        "\t0x0000000001236003\t0x0000000004568003\n")
    monkeypatch.setattr(probe_agent, "INTEL_DEBUGFS", str(tmp_path))
    dump = probe_agent.page_table_dump(bdf)
    assert dump["exists"] and len(dump["lines"]) == 4
    assert [leaf["snp"] for leaf in dump["leaves"]] == [True, False]
    assert dump["leaves"][0] == {"iova_pfn": "0x0000000000100", "pte": "0x4567803", "snp": True}
    assert probe_agent.page_table_dump("0000:00:09.0") == {"exists": False}


# -- other kernel releases (conform --kernel-source) ----------------------------------------------
def test_release_from_makefile():
    head = "# SPDX-License-Identifier: GPL-2.0\nVERSION = 6\nPATCHLEVEL = 2\nSUBLEVEL = 1\nEXTRAVERSION =\n"
    assert build.release_from_makefile(head) == "6.2.1"
    assert build.release_from_makefile("VERSION = 6\nPATCHLEVEL = 8\nSUBLEVEL = 0\nEXTRAVERSION = -rc3\n") == "6.8.0-rc3"
    with pytest.raises(build.BuildError, match="not a kernel source tree"):
        build.release_from_makefile("all:\n\techo hi\n")


# Which of the fragment's options each release's Kconfig lacks, recorded from the trees
# (git grep '^\s*(menu)?config X$' in every Kconfig*): 6.2.1 (daniellucs2002/linux-6.2.1-customized
# 52c70098c), 6.6.9 (mihaelbh/... ad8d9458f), 6.8.0 (sndrzt/linux-6.8 3bc197e7c).
RECORDED_MISSING = {
    "6.2.1": ["CONFIG_VFIO_GROUP", "CONFIG_VFIO_DEVICE_CDEV", "CONFIG_IOMMU_IOPF"],
    "6.6.9": ["CONFIG_IOMMU_IOPF"],
    "6.8.0": ["CONFIG_IOMMU_IOPF"],
    "6.12.117": [],
}


@pytest.mark.parametrize("release", sorted(RECORDED_MISSING))
def test_adapt_fragment_on_recorded_kconfig(release):
    text = build.FRAGMENT.read_text()
    every = {n.removeprefix("CONFIG_") for n in build.parse_config(text)}
    lacking = RECORDED_MISSING[release]
    adapted, missing = build.adapt_fragment(text, every - {n.removeprefix("CONFIG_") for n in lacking})
    assert sorted(missing) == sorted(lacking)
    kept = build.parse_config(adapted)
    assert set(kept) == set(build.parse_config(text)) - set(lacking)
    assert all(kept[k] == v for k, v in build.parse_config(text).items() if k in kept)   # values untouched
    # the negative option survives as a "# ... is not set" line, i.e. still verified
    assert kept["CONFIG_VFIO_CONTAINER"] == "n"


def test_kconfig_symbols_and_tree_key(tmp_path):
    (tmp_path / "drivers/iommu").mkdir(parents=True)
    (tmp_path / "drivers/iommu/Kconfig").write_text("menuconfig IOMMU_SUPPORT\n\tbool\nconfig IOMMUFD\n"
                                                    "\tdepends on IOMMU_SUPPORT\n  config  INTEL_IOMMU\n")
    (tmp_path / "Kconfig.debug").write_text("config FAILSLAB\n")
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools/Kconfig").write_text("config NOT_A_KERNEL_OPTION\n")
    assert build.kconfig_symbols(tmp_path) == {"IOMMU_SUPPORT", "IOMMUFD", "INTEL_IOMMU", "FAILSLAB"}
    key = build.tree_key(b"CONFIG_A=y\n", tmp_path)
    assert key == build.tree_key(b"CONFIG_A=y\n", tmp_path)
    assert key != build.tree_key(b"CONFIG_B=y\n", tmp_path)
    (tmp_path / "drivers/iommu/Kconfig").write_text("config IOMMUFD\n")          # a patched tree
    assert key != build.tree_key(b"CONFIG_A=y\n", tmp_path)


def test_build_refuses_what_is_not_a_kernel(tmp_path):
    with pytest.raises(build.BuildError, match="not a kernel source tree"):
        build.build(tmp_path / "c", tmp_path)
    with pytest.raises(build.BuildError, match="missing"):
        build.build(tmp_path / "c", tmp_path / "linux.tar.xz")


# -- the /dev/mem walk of releases without a per-device debugfs dump (conform/devmem.py) -----------
def test_devmem_walk_of_a_legacy_mode_table():
    import struct

    from pyiommufd.conform import devmem
    regset = ("IOMMU: dmar0 Register Base Address: fed90000\nName\t\t\tOffset\t\tContents\n"
              "VER             \t0x00\t\t0x0000000000000010\n"
              "RTADDR          \t0x20\t\t0x0000000001000000\n")
    assert devmem.root_table_addresses(regset) == {"dmar0": 0x1000000}
    mem = {}

    def put(addr, *qwords):
        for i, q in enumerate(qwords):
            mem[addr + 8 * i] = q
    root, ctx, l3, l2, l1 = 0x1000000, 0x2000000, 0x3000000, 0x4000000, 0x5000000
    put(root + 16 * 0x01, ctx | 1, 0)                                # bus 01 -> context table
    put(ctx + 16 * ((2 << 3) | 0), l3 | 1, (7 << 8) | 1)              # 01:02.0, AW 1 = 3 levels
    put(l3 + 0, l2 | 3)
    put(l2 + 8 * 0, l1 | 3)                                          # IOVA 0..2M through a PT
    put(l2 + 8 * 1, 0x6000000 | 3 | devmem.PTE_LARGE)                # 2M..4M: a 2 MiB superpage, no SNP
    put(l1 + 8 * 0x100, 0x7000000 | 3 | devmem.PTE_SNP)              # IOVA 0x100000
    put(l1 + 8 * 0x101, 0x7001000 | 1 | devmem.PTE_SNP)              # IOVA 0x101000, read-only

    def read(addr, n):
        return b"".join(struct.pack("<Q", mem.get(addr + i, 0)) for i in range(0, n, 8))
    assert devmem.device_table(read, root, "0000:01:02.0") == (2 + 512, [False, True])
    assert devmem.device_table(read, root, "0000:01:03.0") is None    # no context entry
    assert devmem.device_table(read, root, "0000:00:02.0") is None    # no root entry
    with pytest.raises(ValueError, match="legacy"):
        devmem.root_table_addresses(regset.replace("0x0000000001000000", "0x0000000001000c00"))


def test_group_path_names_devices_by_pci_address(monkeypatch):
    import ctypes

    from pyiommufd import uapi
    from pyiommufd.conform import agent
    from pyiommufd.transport import RealTransport
    seen = []
    monkeypatch.setattr(RealTransport, "ioctl", lambda self, fd, req, buf: seen.append(buf.value) or 7)
    t = agent.GroupNamesTransport({"gpu": "0000:00:02.0"})
    assert t.ioctl(3, uapi.VFIO_GROUP_GET_DEVICE_FD, ctypes.create_string_buffer(b"gpu")) == 7
    t.ioctl(3, uapi.VFIO_GROUP_GET_DEVICE_FD, ctypes.create_string_buffer(b"other"))
    assert seen == [b"0000:00:02.0", b"other"]
    assert 7 in t.fds          # the device fd is closed with the scenario's other files


@pytest.mark.parametrize("release, profile", [("6.2.1", "linux-6.2"), ("6.5.13", "linux-6.2"), ("6.6.9", "linux-6.6"),
                                              ("6.6.87", "linux-6.6.y"), ("6.8.0-rc3", "linux-6.7"),
                                              ("6.12.117", "linux-6.12")])
def test_profile_for_release(release, profile):
    from pyiommufd.conform.harness import profile_for_release
    assert profile_for_release(release) == profile


def test_report_names_the_release():
    from pyiommufd.conform import harness
    res = {"configs": {"mock": ""}, "outcomes": [], "summary": {"mock": {"scenarios": 0, "agree": 0, "differ": 0,
           "artifact": 0, "error": 0, "not-run": 0}}, "boots": {}, "scenarios": 0, "runs": 0, "unexplained": 0,
           "dma": {}, "profile": "linux-6.6", "kernel": {"release": "6.6.9", "source": "/t",
                                                        "missing_options": ["CONFIG_IOMMU_IOPF"]}}
    text = harness.text_report(res)
    assert text.startswith("Linux 6.6.9 (/t) against the emulator under linux-6.6")
    assert "CONFIG_IOMMU_IOPF" in text


def test_group_path_closes_device_fds_before_groups(monkeypatch):
    import ctypes

    from pyiommufd import uapi
    from pyiommufd.conform import agent
    from pyiommufd.transport import RealTransport
    closed = []
    monkeypatch.setattr(RealTransport, "ioctl", lambda self, fd, req, buf: 5)
    monkeypatch.setattr(agent.os, "close", closed.append)
    t = agent.GroupNamesTransport({})
    t.fds.update({3, 6})                                  # /dev/iommu, a group opened after ...
    t.ioctl(6, uapi.VFIO_GROUP_GET_DEVICE_FD, ctypes.create_string_buffer(b"x"))   # ... a reused, lower fd
    t.close_all()
    assert closed == [5, 6, 3]
