"""Conformance harness: diff logic, corpus determinism, scenario-to-configuration fitting, the
`info` path without iommufd, and the guest agent's import closure -- all fast, no QEMU.  One
slow test (marked ``conform``) boots the real kernel."""
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import ROOT
from pyiommufd.cli import main as cli_main
from pyiommufd.conform import corpus, harness, hostinfo, observe, sysfs
from pyiommufd.errors import EnvironmentMissing
from pyiommufd.scenario import parse

SRC = ROOT / "src"


# ----------------------------------------------------------------------------- diff
def _rec(i, op="attach", ok=True, errno=None, id_=None, detail=None, share=(), pt=None, run=True):
    if not run:
        return {"i": i, "op": op, "run": False}
    return {"i": i, "op": op, "run": True, "ok": ok, "errno": errno, "id": id_, "detail": detail,
            "share": [list(s) for s in share], "pt": pt or {}}


def _run(*steps, error=None):
    r = {"kind": "scenario", "name": "x", "steps": list(steps)}
    if error:
        r["error"] = error
    return r


def test_diff_agree():
    a = _run(_rec(0, "ioas_alloc", id_=1), _rec(1, id_=3, share=[["a"]], pt={"a": [2, True]}))
    assert observe.diff(a, json.loads(json.dumps(a))) is None


@pytest.mark.parametrize("field,change", [
    ("errno", dict(ok=False, errno="EINVAL")),
    ("id", dict(id_=4)),
    ("detail", dict(detail={"iova": 0x2000})),
    ("share", dict(share=[["a"], ["b"]])),
    ("pt", dict(pt={"a": [2, False]})),
])
def test_diff_names_first_differing_field(field, change):
    base = dict(id_=3, share=[["a", "b"]], pt={"a": [2, True]}, detail={"iova": 0x1000})
    emu = _run(_rec(0, "ioas_alloc", id_=1), _rec(1, **base), _rec(2, "detach"))
    real = _run(_rec(0, "ioas_alloc", id_=1), _rec(1, **dict(base, **change)), _rec(2, "detach", ok=False, errno="EIO"))
    d = observe.diff(emu, real)
    assert (d["step"], d["op"], d["field"]) == (1, "attach", field)


def test_diff_ignores_steps_not_run_on_real_and_failure_details():
    emu = _run(_rec(0, "kvm_add"), _rec(1, "map", ok=False, errno="EEXIST", detail=None))
    real = _run(_rec(0, "kvm_add", run=False), _rec(1, "map", ok=False, errno="EEXIST"))
    emu["steps"][1]["detail"] = None
    assert observe.diff(emu, real) is None


def test_diff_reports_errors_and_lengths():
    emu = _run(_rec(0, id_=1))
    assert observe.diff(emu, _run(_rec(0, id_=1), error="Traceback"))["field"] == "error"
    assert observe.diff(emu, _run(_rec(0, id_=1), _rec(1)))["field"] == "length"


def test_tracker_groups_devices_by_pt_id():
    sc = parse({"devices": [{"name": "a"}, {"name": "b"}, {"name": "c"}],
                "steps": [{"op": "attach", "device": "a", "pt": 1}, {"op": "attach", "device": "b", "pt": 1},
                          {"op": "replace", "device": "c", "pt": 1}, {"op": "detach", "device": "a"},
                          {"op": "attach", "device": "b", "pt": 1}]})
    t = observe.Tracker()
    results = [(True, 4), (True, 4), (True, 5), (True, None), (False, None)]
    for step, (ok, id_) in zip(sc.steps, results):
        t.update(step, {"ok": ok, "errno": None if ok else "EINVAL", "id": id_, "detail": None})
    assert t.sharing() == [["b"], ["c"]]


def test_compare_agree_and_artifacts(monkeypatch):
    emu = _run(_rec(0, id_=3))
    real = _run(_rec(0, id_=4))
    assert harness.compare("x", "snoop-on", emu, emu).status == "agree"
    assert harness.compare("x", "snoop-on", emu, None).status == "not-run"
    assert harness.compare("x", "snoop-on", emu, real).status == "differ"
    art = harness.Artifact("qemu-thing", ("snoop-on",), "attach", "id", "because")
    monkeypatch.setattr(harness, "ARTIFACTS", (art,))
    o = harness.compare("x", "snoop-on", emu, real)
    assert (o.status, o.artifact) == ("artifact", "qemu-thing")
    assert harness.compare("x", "bridge", emu, real).status == "differ"
    leaked = dict(emu, fds_leaked=["7"])
    assert harness.compare("x", "snoop-on", emu, leaked).diff["field"] == "fds_leaked"


def test_emulated_run_has_the_agent_shape():
    item = next(i for i in corpus.hand_written() if i.name == "conform/map-fills-new-hwpt")
    run = harness.run_emulated(item)
    assert "error" not in run
    attach = next(s for s in run["steps"] if s["op"] == "attach")
    assert attach["share"] == [["a"]] and attach["pt"] == {"a": [515, True]}
    assert observe.diff(run, json.loads(json.dumps(run))) is None


def test_parse_agent_output_and_report():
    text = "\n".join(["garbage", json.dumps({"kind": "env", "devices": []}),
                      json.dumps({"kind": "dma", "ok": True, "bdf": "0000:00:02.0", "copied": True,
                                  "blocked_after_unmap": True}),
                      json.dumps(_run(_rec(0, id_=1)))])
    out = harness.parse_agent_output(text)
    assert out["env"]["kind"] == "env" and out["dma"]["ok"] and "x" in out["scenarios"]
    res = {"configs": {"snoop-on": ""}, "outcomes": [{"scenario": "x", "config": "snoop-on", "status": "agree"}],
           "summary": {"snoop-on": {"scenarios": 1, "agree": 1, "differ": 0, "artifact": 0, "error": 0, "not-run": 0}},
           "boots": {"snoop-on": {"seconds": 3.0}}, "scenarios": 1, "runs": 1, "unexplained": 0,
           "dma": {"snoop-on": out["dma"]}}
    text = harness.text_report(res)
    assert "x" in text and "agree" in text and "DMA check (snoop-on" in text


# ----------------------------------------------------------------------------- corpus
def test_random_corpus_is_deterministic():
    a = corpus.random_scenarios(3, 8, snoop_control=False)
    b = corpus.random_scenarios(3, 8, snoop_control=False)
    assert a == b
    assert a != corpus.random_scenarios(4, 8, snoop_control=False)
    assert [i.name for i in a] == [f"random/own-scoff-s3-{i:03d}" for i in range(8)]


@pytest.mark.parametrize("kw", [dict(), dict(snoop_control=False), dict(shared_group=True), dict(device_less=True)])
def test_random_scenarios_parse_run_and_fit(kw):
    items = corpus.random_scenarios(0, 12, **kw)
    for it in items:
        sc = harness.parse_item(it)
        assert 10 <= len(sc.steps) <= 26
        run = harness.run_emulated(it)
        assert "error" not in run, run["error"]
        fit = [c for c in harness.CONFIGS.values() if harness.fits(sc, c) is None]
        assert fit, it.name
        if kw.get("device_less"):
            assert len(fit) == len(harness.CONFIGS)
        elif kw.get("shared_group"):
            assert [c.name for c in fit] == ["bridge"]


def test_to_toml_round_trips():
    data = {"name": "n", "description": 'quote " and \\ and\nnewline', "system": {"iommu": "intel",
            "units": [{"name": "dmar0", "snoop_control": False}]},
            "devices": [{"name": "a", "group": "g"}],
            "steps": [{"op": "unmap", "ioas": 1, "iova": 0, "length": (1 << 64) - 1},
                      {"op": "hwpt_alloc", "device": "a", "pt": 1, "flags": ["NEST_PARENT"],
                       "expect": {"errno": "EOPNOTSUPP"}}]}
    assert tomllib.loads(corpus.to_toml(data)) == data


def test_default_corpus_is_big_enough_and_single_unit():
    items = corpus.default_corpus()
    per, unfit = harness.plan(items, list(harness.CONFIGS.values()))
    runnable = {i.name for v in per.values() for i in v}
    assert len(runnable) >= 200
    assert sum(1 for n in runnable if n.startswith("conform/")) >= 40
    assert all("units" in u["why"] or "iommu" in u["why"] for u in unfit)


def test_sc_variants_flip_snoop_control_and_drop_expectations():
    hw = [i for i in corpus.hand_written() if i.name == "conform/hw-info"]
    (v,) = corpus.sc_variants(hw)
    data = tomllib.loads(v.toml)
    assert v.name == "conform/hw-info@sc-off" and data["system"]["units"][0]["snoop_control"] is False
    assert not any("expect" in s for s in data["steps"])


# ----------------------------------------------------------------------------- fitting
def _sc(units=({"name": "dmar0"},), devices=("a",), group=None, iommu="intel", **system):
    return parse({"system": {"iommu": iommu, "units": list(units), **system},
                  "devices": [dict({"name": d}, **({"group": group} if group else {})) for d in devices],
                  "steps": [{"op": "ioas_alloc"}]})


def _fit(sc):
    return {name for name, c in harness.CONFIGS.items() if harness.fits(sc, c) is None}


def test_fits():
    assert _fit(_sc()) == {"snoop-on", "bridge"}
    assert _fit(_sc(units=[{"name": "dmar0", "snoop_control": False}])) == {"snoop-off"}
    assert _fit(_sc(devices=("a", "b"))) == {"snoop-on"}
    assert _fit(_sc(devices=("a", "b"), group="g")) == {"bridge"}
    assert _fit(_sc(devices=("a", "b", "c", "d"))) == set()
    assert _fit(_sc(devices=())) == set(harness.CONFIGS)
    assert _fit(_sc(units=[{"name": "d0"}, {"name": "d1"}], devices=())) == {"mock"}
    assert _fit(_sc(iommu="amd")) == set()
    assert _fit(_sc(units=[{"name": "dmar0", "nesting": True}])) == set()
    assert _fit(_sc(intel_page_table="first-level")) == set()
    assert "3 remapping units" in harness.fits(_sc(units=[{"name": f"u{i}"} for i in range(3)], devices=()),
                                               harness.CONFIGS["snoop-on"])


# ----------------------------------------------------------------------------- sysfs / info
DUMP = """IOVA_PFN\t\tPML5E\t\t\tPML4E\t\t\tPDPE\t\t\tPDE\t\t\tPTE
Device 0000:00:02.0 @0x4e8000
0x0000000000100 |\t0x0000000000000000\t0x0000000000000000\t0x0000000002816003\t0x00000000027fe003\t0x000000001fd7a803
0x0000000000101 |\t0x0000000000000000\t0x0000000000000000\t0x0000000002816003\t0x00000000027fe003\t0x000000001fd7b803
0x0000000000200 |\t0x0000000000000000\t0x0000000000000000\t0x0000000002816003\t0x0000000040000883
"""


def test_parse_page_table():
    assert sysfs.parse_page_table(DUMP) == (2 + 512, [True])
    assert sysfs.cc_of(sysfs.parse_page_table(DUMP.replace("803", "003"))) == [514, "mixed"]
    assert sysfs.parse_page_table("IOVA_PFN\tPML5E\n") is None and sysfs.parse_page_table(None) is None


def _fake_host(root: Path, ecap="f00fca"):
    for bdf, cdev, group in (("0000:00:02.0", "vfio0", "2"), ("0000:00:03.0", "vfio1", "3")):
        d = root / "sys/bus/pci/devices" / bdf
        (d / "vfio-dev" / cdev).mkdir(parents=True)
        (d / "vendor").write_text("0x1234\n")
        (d / "device").write_text("0x11e8\n")
        (root / "sys/kernel/iommu_groups" / group / "devices" / bdf).mkdir(parents=True)
        os.symlink(f"../../../kernel/iommu_groups/{group}", d / "iommu_group")
        os.symlink("../../virtual/iommu/dmar0", d / "iommu")
        os.symlink("../../bus/pci/drivers/vfio-pci", d / "driver")
    u = root / "sys/class/iommu/dmar0/intel-iommu"
    u.mkdir(parents=True)
    (u / "ecap").write_text(ecap + "\n")
    (u / "cap").write_text("d2008c22260286\n")
    (root / "dev/vfio/devices").mkdir(parents=True)
    (root / "dev/vfio/devices/vfio0").write_text("")
    (root / "dev/vfio/devices/vfio1").write_text("")
    (root / "dev/iommu").write_text("")
    return root


@pytest.mark.parametrize("ecap,sc", [("f00fca", True), ("f00f4a", False)])
def test_info_collect_from_fake_sysfs(tmp_path, ecap, sc):
    root = _fake_host(tmp_path, ecap)
    info = hostinfo.collect(str(root), iommufd_path=str(root / "dev/iommu"), bind=False)
    assert info["kind"] == "intel" and [u["snoop_control"] for u in info["units"]] == [sc]
    assert [(d["bdf"], d["iommu_group"], d["unit"], d["cc_capable"]) for d in info["devices"]] == [
        ("0000:00:02.0", "2", "dmar0", sc), ("0000:00:03.0", "3", "dmar0", sc)]
    counts = hostinfo.domain_counts(info)
    assert counts["linux-6.12"] == {"min": 1, "max": 1, "orders": 2, "truncated": False, "failed_attaches": 0}


def test_vfio_dev_in_sysfs_without_the_char_device_is_no_cdev(tmp_path):
    root = _fake_host(tmp_path)
    (root / "dev/vfio/devices/vfio1").unlink()       # 6.1-6.5: sysfs lists vfio-dev/vfio1, /dev has no cdev
    devs = sysfs.edu_devices(str(root))
    assert [(d["bdf"], d["cdev"]) for d in devs] == [("0000:00:02.0", "vfio0"), ("0000:00:03.0", None)]


def test_info_domain_counts_show_order_dependence():
    info = {"kind": "intel", "devices": [
        {"bdf": "gpu", "unit": "dmar1", "iommu_group": "1", "cc_capable": False},
        {"bdf": "nic", "unit": "dmar0", "iommu_group": "2", "cc_capable": True}]}
    counts = hostinfo.domain_counts(info, profiles=("linux-6.2", "linux-6.12"))
    assert counts["linux-6.12"]["min"] == 1 and counts["linux-6.12"]["max"] == 2
    assert hostinfo.domain_counts({"kind": None, "devices": []}) == {"skipped": "no VFIO devices behind a modelled IOMMU"}


def test_info_without_iommufd_is_a_clear_exit_3(tmp_path, monkeypatch, capsys):
    with pytest.raises(EnvironmentMissing, match="does not exist"):
        hostinfo.check_iommufd(str(tmp_path / "iommu"))
    monkeypatch.setattr(hostinfo.os.path, "exists", lambda p: False if p == "/dev/iommu" else os.path.lexists(p))
    for argv in (["info"], ["info", "--json"]):
        assert cli_main(argv) == 3
        out, err = capsys.readouterr()
        assert out == "" and "/dev/iommu does not exist" in err and "Traceback" not in err


def test_info_without_permission_is_exit_3(tmp_path, monkeypatch, capsys):
    p = tmp_path / "iommu"
    p.write_text("")
    real_open = os.open

    def deny(path, *a, **k):   # root opens anything: deny the way a user without access is denied
        if str(path) == str(p):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(hostinfo.os, "open", deny)
    with pytest.raises(EnvironmentMissing, match="no permission"):
        hostinfo.check_iommufd(str(p))
    monkeypatch.setattr(hostinfo, "collect", lambda bind=True: hostinfo.check_iommufd(str(p)))
    assert cli_main(["info", "--json"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and "no permission" in err


def test_cli_info_with_no_iommufd_through_the_entry_point():
    if os.path.exists("/dev/iommu"):
        pytest.skip("this host has /dev/iommu")
    r = subprocess.run([sys.executable, "-m", "pyiommufd", "info"], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert r.returncode == 3 and "/dev/iommu" in r.stderr and "Traceback" not in r.stderr


def test_cli_conform_list_and_bad_input(tmp_path, capsys):
    assert cli_main(["conform", "--list", "--random", "2", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert set(listing["configs"]) == set(harness.CONFIGS) and listing["configs"]["snoop-on"]
    assert cli_main(["conform", "--config", "nope", "--list"]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[[steps]]\nop = 'fly'\n")
    assert cli_main(["conform", str(bad)]) == 2


# ----------------------------------------------------------------------------- the guest's imports
GUEST_MODULES = ["runner", "client", "scenario", "uapi", "errors", "profiles", "transport", "hazards", "userspace",
                 "conform.agent", "conform.observe", "conform.sysfs"]


def test_agent_imports_nothing_third_party():
    """The guest has the stdlib only: these must import with rich and sortedcontainers gone,
    and without pulling in the emulator (kernel.host is imported lazily by emulated())."""
    code = f"""
import sys, importlib, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('rich', 'sortedcontainers', 'pytest', 'hypothesis'):
            raise ImportError('third-party: ' + name)
sys.meta_path.insert(0, Block())
for m in {GUEST_MODULES!r}:
    importlib.import_module('pyiommufd.' + m)
assert 'pyiommufd.kernel.host' not in sys.modules, 'emulator imported'
third = sorted(n for n in sys.modules if n.split('.')[0] in ('rich', 'sortedcontainers'))
assert not third, third
print('ok')
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(SRC)))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ----------------------------------------------------------------------------- the one boot
def _conform_available() -> str | None:
    if os.environ.get("PYIOMMUFD_CONFORM") == "1":
        return None
    import shutil

    from pyiommufd.conform import build
    if not shutil.which("qemu-system-x86_64") or not build.DEFAULT_TARBALL.is_file():
        return "QEMU or linux-source-6.12 not installed (src/pyiommufd/conform/install-deps.sh)"
    key = build.kernel_key(build.FRAGMENT.read_bytes(), build.DEFAULT_TARBALL)
    if not (build.default_cache_dir() / "kernels" / key / "bzImage").is_file():
        return "conformance kernel not built yet (make conform, or PYIOMMUFD_CONFORM=1)"
    return None


@pytest.mark.conform
def test_boot_real_kernel_agrees_and_dma_works():
    why = _conform_available()
    if why:
        pytest.skip(why)
    names = {"conform/map-fills-new-hwpt", "conform/msi-attach-over-mapping", "conform/replace-across-ioas",
             "conform/hw-info"}
    items = [i for i in corpus.hand_written() if i.name in names]
    items += corpus.sc_variants(items) + corpus.random_scenarios(11, 3)
    res = harness.run_conformance(items, [harness.CONFIGS["snoop-on"], harness.CONFIGS["snoop-off"]])
    assert res["unexplained"] == 0, harness.text_report(res)
    assert res["runs"] == len(items) and res["dma_ok"], res["dma"]
    from pyiommufd.conform.build import build_kernel
    info = harness.boot_info(harness.CONFIGS["snoop-on"], kernel=build_kernel(), cache=None,
                             payload=SRC / "pyiommufd")["info"]
    assert [d["hw_info"]["snoop_control"] for d in info["devices"]] == [True] * 3
    assert info["domain_counts"]["linux-6.12"]["max"] == 1


def test_initramfs_prune_keeps_recent_and_tolerates_races(tmp_path, monkeypatch):
    """Several processes share the cache: pruning removes only old archives beyond the newest
    ones, and a file that vanished meanwhile is no error."""
    import time as _time

    from pyiommufd.conform import build
    now = _time.time()
    for i in range(6):
        p = tmp_path / f"{i}.cpio"
        p.write_bytes(b"x")
        os.utime(p, (now - 7200 + i, now - 7200 + i) if i < 4 else (now, now))
    gone = tmp_path / "0.cpio"
    real_stat = Path.stat

    def racy_stat(self, *a, **k):   # another process removes 0.cpio while we sort
        if self == gone and os.path.exists(gone):
            gone.unlink()
        return real_stat(self, *a, **k)
    monkeypatch.setattr(Path, "stat", racy_stat)
    build._prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["4.cpio", "5.cpio"]
