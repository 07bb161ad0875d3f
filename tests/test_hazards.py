"""Issue 5: every hazard kind is reached by a scenario under one profile, and the same scenario is
safe under another; KVM state is in the JSON."""
import pytest

from conftest import ROOT, SCENARIOS, scenario_files
from pyiommufd.hazards import KINDS
from pyiommufd.runner import run
from pyiommufd.scenario import load


def _kinds_by_profile():
    out = {}
    for f in scenario_files():
        if f.parent.name in ("bench", "explore") or "conform" in f.parts:
            continue
        sc = load(f)
        for p in sc.profiles:
            res = run(sc, p)
            out[(f.name, p)] = {h["kind"] for h in res["final"]["hazards"]}
    return out


@pytest.fixture(scope="module")
def reached():
    return _kinds_by_profile()


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_reached_and_avoided_by_the_same_scenario(kind, reached):
    files = {f for f, _ in reached}
    witnesses = [f for f in files if any(kind in k for (g, _), k in reached.items() if g == f)
                 and any(kind not in k for (g, _), k in reached.items() if g == f)]
    assert witnesses, f"no scenario both reaches and avoids {kind}"


def test_hot_unplug_example_from_the_issue():
    sc = load(SCENARIOS / "hazards" / "kvm-hot-unplug.toml")
    e3 = run(sc, "linux-6.12")
    e1 = run(sc, "linux-6.2")
    assert {h["kind"] for h in e3["final"]["hazards"]} == {"kvm-coherent-but-noncoherent-dma"}
    assert "kvm-coherent-but-noncoherent-dma" not in {h["kind"] for h in e1["final"]["hazards"]}
    h = e3["final"]["hazards"][0]
    assert h["confirmed"] is True and h["step"] == 9     # the chain is read in 6.12.117 (kernel notes 10.1)
    assert "not observed on hardware" in h["detail"]
    assert e3["final"]["kvm"]["noncoherent_devices"] == 0 and e3["final"]["kvm"]["wbinvd_emulated"] is False
    # before the unplug KVM did count the gpu
    mid = run(sc, "linux-6.12")["steps"][8]
    assert mid["detail"] == {"coherent": False, "kvm_flushes": True}
    assert e3["steps"][10]["detail"] == {"coherent": False, "kvm_flushes": False}


def test_upgrade_example_from_the_issue():
    sc = load(SCENARIOS / "thread" / "upgrade-cannot-fix-iotes.toml")
    assert {h["kind"] for h in run(sc, "linux-6.6")["final"]["hazards"]} == {"stale-iopte-after-upgrade"}
    r = run(sc, "linux-6.6.y")
    assert r["steps"][-1]["errno"] == "EINVAL" and not r["final"]["hazards"]
    r = run(sc, "linux-6.12")
    assert r["steps"][-1]["ok"] and not r["final"]["hazards"]
    assert [h["enforce_cc"] for h in r["final"]["hwpts"]] == [False]


def test_dma_records_coherency():
    sc = load(SCENARIOS / "hazards" / "hotplug-noncc-device.toml")
    r = run(sc, "linux-6.12")
    assert r["steps"][5]["detail"]["coherent"] is True     # no-snoop DMA through a CC domain: IOPTE has SNP


def test_dma_through_stale_iopte_is_not_coherent():
    from pyiommufd.runner import Vmm
    from pyiommufd.scenario import Step
    sc = load(SCENARIOS / "thread" / "upgrade-cannot-fix-iotes.toml")
    for profile, want in (("linux-6.6", False), ("linux-6.12", False)):
        vmm = Vmm(sc, profile)
        for s in sc.steps:
            vmm.apply(s)
        r = vmm.apply(Step(99, "dma", {"device": "nic", "iova": 0x100000, "length": 0x800, "snoop": False}))
        assert r["ok"] and r["detail"]["coherent"] is want
        snooped = vmm.apply(Step(100, "dma", {"device": "nic", "iova": 0x100000, "length": 0x800, "snoop": True}))
        assert snooped["detail"]["coherent"] is True


def test_kvm_hazard_chain_is_recorded_in_the_docs():
    """Issue 15: H4 is marked confirmed because each link was read in 6.12.117; the notes hold the chain."""
    from pyiommufd.hazards import kvm_coherent_but_noncoherent_dma
    notes = (ROOT / "docs" / "kernel-notes-drivers-kvm.md").read_text()
    chain = notes[notes.index("### 10.1"):notes.index("## 11.")]
    for fn in ("device_iommu_capable", "intel_iommu_capable", "iommufd_hwpt_paging_alloc", "prepare_domain_attach_device",
               "kvm_vfio_update_coherency", "vfio_file_enforced_coherent", "kvm_arch_unregister_noncoherent_dma",
               "kvm_emulate_wbinvd_noskip", "vfio_iommufd_physical_attach_ioas"):
        assert fn in chain, fn
    assert "confirmed in source" in chain and "not observed on hardware" in chain
    assert "10.1" in kvm_coherent_but_noncoherent_dma.__doc__
