"""Profiles: kernel eras and proposed policies as data.

A profile is a record of switches the emulated kernel consults.  Adding a profile
never means editing the kernel model.  Each switch names where it was read
(``sources``); docs/kernel-notes-*.md hold the longer citations.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    summary: str
    era: str                      # "E1" | "E2" | "E3" | "proposal" (SPEC.md section 3)
    kernel: str | None            # the release modelled, None for proposals
    # -- iommufd core ------------------------------------------------------------
    cc_at_alloc: bool             # hwpt_paging_alloc calls enforce_cache_coherency for a CC-capable device
    upgrade_on_attach: bool       # attach of a CC-capable device upgrades a non-CC HWPT (EINVAL if the driver refuses)
    upgrade_on_replace: bool      # the same in replace (6.6 only)
    vfio_cdev: bool               # VFIO device cdevs + BIND/ATTACH/DETACH_IOMMUFD_PT exist (6.6+)
    hwpt_alloc: str | None        # layout of IOMMU_HWPT_ALLOC ("6.6", "6.8", "6.12"); None: no such ioctl
    hw_info: str | None           # layout of IOMMU_GET_HW_INFO; None: no such ioctl
    hwpt_alloc_bad_pt_errno: str  # errno for an unknown / wrong-type pt_id in HWPT_ALLOC
    group_conflict_errno: str     # a group member attached to another HWPT than its siblings
    id_bits: int                  # xa_limit_32b up to 6.5, xa_limit_31b from 6.6
    replace_checks_device: bool   # 6.12.117: do_replace also checks the device itself is attached
    nesting: bool                 # HWPT_ALLOC of a nested HWPT on a NEST_PARENT (6.8+)
    map_requires_prot: bool       # IOAS_MAP without READABLE/WRITEABLE -> EINVAL (6.12.117, 6.6.49+)
    # -- drivers -------------------------------------------------------------------
    intel_has_mappings_fix: bool  # e645c20e8e9c: no enforce_cache_coherency on a 2nd-level domain with mappings
    intel_driver_checks: bool     # Intel refuses CC for domains with non-SC devices and non-SC devices in CC domains
    intel_aperture_at_alloc: bool # Intel domains get the unit's width at allocation (6.12 paging_domain_alloc);
                                  # off: 57 bits until the first attach (md_domain_init, up to 6.11)
    smmuv3_cc: bool               # e89573cf4a13: SMMUv3 reports CC for CANWBS masters (v6.13)
    # -- KVM -----------------------------------------------------------------------
    kvm_tdp_zap: bool             # 362ff6dca541: zap TDP on noncoherent DMA 0<->1 (v6.7)
    kvm_vfio_cdev: bool           # kvm-vfio accepts cdev files (KVM_DEV_VFIO_FILE, v6.6)
    # -- proposals -----------------------------------------------------------------
    want_cc_flag: bool = False    # HWPT_ALLOC takes a "want CC" flag (seed thread, never merged)
    sources: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    def has(self, release: str) -> bool:
        """Does this profile's kernel include what entered in ``release`` ("6.11")?  Proposals
        (kernel None) are modelled on the newest kernel: yes."""
        return release_tuple(self.kernel) >= release_tuple(release)


def release_tuple(v: str | None) -> tuple[int, int]:
    """"6.6.11" -> (6, 6); None (a proposal) sorts after every release."""
    return tuple(int(x) for x in (v or "99.99").split(".")[:2])


_E1 = dict(
    era="E1", cc_at_alloc=False, upgrade_on_attach=True, upgrade_on_replace=False, vfio_cdev=False,
    hwpt_alloc=None, hw_info=None, hwpt_alloc_bad_pt_errno="ENOENT", group_conflict_errno="EBUSY", id_bits=32,
    replace_checks_device=False, nesting=False, map_requires_prot=False, intel_has_mappings_fix=False, intel_driver_checks=True,
    intel_aperture_at_alloc=False,
    smmuv3_cc=False, kvm_tdp_zap=False, kvm_vfio_cdev=False,
    sources={
        "upgrade_on_attach": "v6.2.1 iommufd_device_do_attach; v6.5 iommufd_hw_pagetable_attach",
        "cc_at_alloc": "v6.2.1 iommufd_hw_pagetable_alloc (no CC decision at creation)",
        "vfio_cdev": "v6.5 has no drivers/vfio/device_cdev.c; devices come through the group compat path",
        "group_conflict_errno": "v6.2.1 iommu_attach_group -> __iommu_attach_group EBUSY",
        "id_bits": "v6.5 main.c _iommufd_object_alloc xa_limit_32b",
        "intel_driver_checks": "v6.2.1 intel/iommu.c domain_support_force_snooping, prepare_domain_attach_device",
        "intel_aperture_at_alloc": "v6.2.1, v6.6.9, v6.6.87, v6.8 intel/iommu.c intel_iommu_domain_alloc: "
                                   "md_domain_init(DEFAULT_DOMAIN_ADDRESS_WIDTH = 57), aperture "
                                   "__DOMAIN_MAX_ADDR(57); prepare_domain_attach_device narrows gaw and "
                                   "domain_attach_iommu -> domain_update_iommu_cap the aperture at attach",
    })
_E2 = dict(
    _E1, era="E2", cc_at_alloc=True, upgrade_on_replace=True, vfio_cdev=True, hwpt_alloc="6.6", hw_info="6.6",
    group_conflict_errno="EINVAL", id_bits=31, kvm_vfio_cdev=True,
    sources={
        "cc_at_alloc": "v6.6 hw_pagetable.c iommufd_hw_pagetable_alloc (enforce_cc for a CC-capable idev)",
        "upgrade_on_attach": "v6.6 device.c iommufd_hw_pagetable_attach (upgrade before attach)",
        "upgrade_on_replace": "v6.6 device.c iommufd_device_do_replace (upgrade for any CC device of the group)",
        "vfio_cdev": "v6.6 drivers/vfio/device_cdev.c",
        "hwpt_alloc": "v6.6 iommufd.h struct iommu_hwpt_alloc (24 bytes, flags must be 0)",
        "group_conflict_errno": "v6.6 device.c iommufd_hw_pagetable_attach: igroup->hwpt != hwpt -> EINVAL",
        "id_bits": "v6.6 main.c xa_limit_31b",
        "kvm_vfio_cdev": "v6.6 virt/kvm/vfio.c KVM_DEV_VFIO_FILE",
    })
_E3 = dict(
    _E2, era="E3", upgrade_on_attach=False, upgrade_on_replace=False, hwpt_alloc="6.8", hw_info="6.8",
    hwpt_alloc_bad_pt_errno="EINVAL", nesting=True, intel_has_mappings_fix=True, kvm_tdp_zap=True,
    sources={
        "upgrade_on_attach": "2ccabf81ddff 'iommufd: Only enforce cache coherency in iommufd_hw_pagetable_alloc' (v6.7)",
        "hwpt_alloc": "v6.8 iommufd.h struct iommu_hwpt_alloc (+data_type, data_len, data_uptr)",
        "hwpt_alloc_bad_pt_errno": "v6.8 hw_pagetable.c iommufd_hwpt_alloc: pt_obj lookup failure -> EINVAL",
        "intel_has_mappings_fix": "e645c20e8e9c 'iommu/vt-d: Support enforce_cache_coherency only for empty domains' (v6.7)",
        "kvm_tdp_zap": "362ff6dca541 'KVM: x86/mmu: Zap KVM TDP when noncoherent DMA assignment starts/stops' (v6.7)",
        "nesting": "v6.8 hw_pagetable.c iommufd_hwpt_nested_alloc",
    })

PROFILES: dict[str, Profile] = {}


def _add(name: str, summary: str, kernel: str | None, base: dict, **over) -> None:
    sources = dict(base.get("sources", {}))
    sources.update(over.pop("sources", {}))
    PROFILES[name] = Profile(name=name, summary=summary, kernel=kernel, **dict(base, **over, sources=sources))


_add("linux-6.2", "E1: CC decided by an upgrade at attach; devices via the VFIO group compat path (6.2-6.5)",
     "6.2", _E1)
_add("linux-6.6", "E2: CC at creation and upgrade on attach/replace; 6.6.0-6.6.10 (no Intel has_mappings fix)",
     "6.6", _E2)
_add("linux-6.6.y", "E2 with the Intel has_mappings fix backported (6.6.11 and later)", "6.6.11", _E2,
     intel_has_mappings_fix=True, map_requires_prot=True,
     sources={"intel_has_mappings_fix": "e645c20e8e9c backported to 6.6.11 (lxdklp/linux-6.6.y history)",
              "map_requires_prot": "present in 6.6.49 iommufd_ioas_map (docs/kernel-notes-core.md)"})
_add("linux-6.7", "E3: CC fixed at creation, never upgraded; KVM zaps TDP on noncoherent 0<->1", "6.7", _E3)
_add("linux-6.12", "E3, current behaviour (Debian 6.12.117); the default", "6.12", _E3, hwpt_alloc="6.12",
     hw_info="6.12", replace_checks_device=True, intel_aperture_at_alloc=True, map_requires_prot=True,
     sources={"map_requires_prot": "6.12.117 ioas.c iommufd_ioas_map: no READABLE/WRITEABLE -> EINVAL",
              "intel_aperture_at_alloc": "6.12.117 intel/iommu.c paging_domain_alloc: gaw from the unit "
                                         "(agaw, cap_mgaw), aperture set at allocation",
              "replace_checks_device": "6.12.117 device.c iommufd_device_do_replace: iommufd_device_is_attached",
              "hwpt_alloc": "6.12.117 iommufd.h struct iommu_hwpt_alloc (+fault_id, __reserved2)",
              "hw_info": "6.12.117 iommufd.h struct iommu_hw_info (out_max_pasid_log2)"})
_add("linux-6.13", "E3 plus SMMUv3 cache-coherency enforcement for CANWBS masters", "6.13", _E3,
     hwpt_alloc="6.12", hw_info="6.12", replace_checks_device=True, intel_aperture_at_alloc=True,
     map_requires_prot=True, smmuv3_cc=True,
     sources={"smmuv3_cc": "e89573cf4a13 'iommu/arm-smmu-v3: Support IOMMU_GET_HW_INFO/CANWBS' (v6.13)"})
_add("proposal-want-cc", "Proposal from the seed thread: HWPT_ALLOC takes a user 'want CC' flag (never merged); "
     "auto-domains ask for CC only when the device is capable and no non-CC placement exists", None, _E3,
     era="proposal", hwpt_alloc="6.12", hw_info="6.12", replace_checks_device=True, intel_aperture_at_alloc=True,
     map_requires_prot=True, want_cc_flag=True)
_add("proposal-upgrade-keep", "Proposal: E3 plus E1's upgrade on attach ('consistency regardless of order')",
     None, _E3, era="proposal", hwpt_alloc="6.12", hw_info="6.12", replace_checks_device=True,
     intel_aperture_at_alloc=True, map_requires_prot=True, upgrade_on_attach=True, upgrade_on_replace=True)
_add("ablation-intel-no-sc-checks", "What the thread feared: linux-6.6 with an Intel driver that neither refuses "
     "the CC upgrade of a domain holding non-SC devices nor refuses non-SC devices in a CC domain", None, _E2,
     era="proposal", intel_driver_checks=False,
     sources={"intel_driver_checks": "hypothetical: the checks of fc0f200c 'iommu/vt-d: Check domain "
                                     "force_snooping against attached devices' (v5.19) removed"})

DEFAULT_PROFILE = "linux-6.12"

# --kernel X.Y[.Z] -> profile (SPEC.md section 3 era table)
def profile_for_kernel(version: str) -> Profile:
    """Map a kernel version to the profile that models it; ValueError if none does."""
    m = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?", version.strip())
    if not m:
        raise ValueError(f"kernel version {version!r} is not of the form X.Y or X.Y.Z")
    major, minor, sub = int(m[1]), int(m[2]), int(m[3] or 0)
    v = (major, minor)
    if v < (6, 2):
        raise ValueError(f"kernel {version}: iommufd first shipped in 6.2; no profile models {version}")
    if v < (6, 6):
        return PROFILES["linux-6.2"]
    if v == (6, 6):
        return PROFILES["linux-6.6.y" if sub >= 11 else "linux-6.6"]
    if v < (6, 12):
        return PROFILES["linux-6.7"]
    if v == (6, 12):
        return PROFILES["linux-6.12"]
    return PROFILES["linux-6.13"]


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}") from None


# -- profile files (DESIGN.md "Profile files") ---------------------------------------------------
BUILTIN_PROFILES = frozenset(PROFILES)
# Fields a file may not override: the identity and bookkeeping of the record, not switches.
_NOT_SWITCHES = ("name", "summary", "era", "kernel", "sources")
SWITCHES = tuple(f.name for f in dataclasses.fields(Profile) if f.name not in _NOT_SWITCHES)
_FILE_KEYS = ("name", "summary", "base", "switches", "sources")
# Environment variable naming the profile files loaded so far (os.pathsep-separated), so worker
# processes that do not inherit this one's memory (sweep's forkserver pool, Ray) register them too.
PROFILE_FILES_ENV = "PYIOMMUFD_PROFILE_FILES"
FILE_BASES: dict[str, str] = {}   # profile file's profile name -> its base


class ProfileFileError(ValueError):
    """A profile file that cannot be used; the message names the file and what is wrong."""


def _check_switch(path: str, key: str, value, base_value):
    """The value a switch gets from a file, or ProfileFileError saying which type it needs."""
    def bad(want: str):
        return ProfileFileError(f"{path}: [switches] {key} = {value!r}: must be {want}")
    if key in ("hwpt_alloc", "hw_info"):
        from . import uapi
        layouts = uapi.HWPT_ALLOC_LAYOUTS if key == "hwpt_alloc" else uapi.HW_INFO_LAYOUTS
        if value == "none":
            return None
        if value not in layouts:
            raise bad(f"one of {', '.join(repr(k) for k in layouts)} or 'none' (no such ioctl)")
        return value
    if key.endswith("_errno"):
        import errno
        if not isinstance(value, str) or not hasattr(errno, value if value != "EOPNOTSUPP" else "ENOTSUP"):
            raise bad("an errno name such as 'EINVAL'")
        return value
    if isinstance(base_value, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(base_value, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if not isinstance(value, type(base_value)):
        raise bad(f"a {type(base_value).__name__}")
    return value


def load_profile_file(path) -> Profile:
    """Read a profile file: ``base`` (a built-in profile), ``name`` (not a built-in's), optional
    ``summary``, ``[switches]`` overriding the base's switches by field name and ``[sources]``
    saying where each override comes from.  ProfileFileError names every unknown key, base or
    switch together with the known ones, and a value of the wrong type."""
    import tomllib
    path = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ProfileFileError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileFileError(f"{path}: not TOML: {e}") from None
    unknown = [k for k in data if k not in _FILE_KEYS]
    if unknown:
        raise ProfileFileError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(_FILE_KEYS)}")
    for key in ("name", "base"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ProfileFileError(f"{path}: '{key}' (a string) is required")
    name, base_name = data["name"], data["base"]
    if base_name not in BUILTIN_PROFILES:
        raise ProfileFileError(f"{path}: unknown base {base_name!r}; known: {', '.join(sorted(BUILTIN_PROFILES))}")
    if name in BUILTIN_PROFILES:
        raise ProfileFileError(f"{path}: name {name!r} shadows a built-in profile; built-in: "
                               f"{', '.join(sorted(BUILTIN_PROFILES))}")
    summary = data.get("summary", f"{base_name} with the switches of {path}")
    if not isinstance(summary, str):
        raise ProfileFileError(f"{path}: 'summary' must be a string")
    switches, sources = data.get("switches", {}), data.get("sources", {})
    for table, value in (("switches", switches), ("sources", sources)):
        if not isinstance(value, dict):
            raise ProfileFileError(f"{path}: '{table}' must be a table ([{table}])")
    base = PROFILES[base_name]
    unknown = [k for k in switches if k not in SWITCHES]
    if unknown:
        raise ProfileFileError(f"{path}: unknown switch(es) {', '.join(unknown)}; known: {', '.join(SWITCHES)}")
    over = {k: _check_switch(path, k, v, getattr(base, k)) for k, v in switches.items()}
    stray = [k for k in sources if k not in switches]
    if stray:
        raise ProfileFileError(f"{path}: [sources] {', '.join(stray)} not overridden in [switches] "
                               f"(overridden: {', '.join(switches) or 'none'})")
    bad = [k for k, v in sources.items() if not isinstance(v, str)]
    if bad:
        raise ProfileFileError(f"{path}: [sources] {', '.join(bad)}: must be text")
    merged_sources = dict(base.sources)
    merged_sources.update({k: sources.get(k, f"{path} (no source given)") for k in over})
    # era and kernel stay the base's: the model consults them (E1 attach rules, the uAPI layouts)
    profile = dataclasses.replace(base, name=name, summary=summary, sources=merged_sources, **over)
    FILE_BASES[name] = base_name
    return profile


def overrides(profile: Profile) -> dict[str, tuple]:
    """{switch: (base's value, this profile's value)} for a profile file's profile ({} otherwise)."""
    base = PROFILES.get(FILE_BASES.get(profile.name, ""))
    if base is None:
        return {}
    return {k: (getattr(base, k), getattr(profile, k)) for k in SWITCHES if getattr(base, k) != getattr(profile, k)}


def profile_from_json(d: dict) -> Profile:
    """The inverse of Profile.to_json() (how a profile file's profile reaches the conformance guest)."""
    names = {f.name for f in dataclasses.fields(Profile)}
    unknown = [k for k in d if k not in names]
    if unknown:
        raise ValueError(f"profile record: unknown field(s) {', '.join(unknown)}")
    return Profile(**d)


def register_profile(profile: Profile) -> Profile:
    """Make *profile* known by name to every command (get_profile, PROFILES).  A built-in name, or a
    second different definition of the same name, is a ProfileFileError."""
    if profile.name in BUILTIN_PROFILES:
        raise ProfileFileError(f"profile {profile.name!r} shadows a built-in profile")
    old = PROFILES.get(profile.name)
    if old is not None and old != profile:
        raise ProfileFileError(f"two different profiles named {profile.name!r}")
    PROFILES[profile.name] = profile
    return profile


def register_profile_file(path) -> Profile:
    """load_profile_file() + register_profile(), and note the file in the environment so worker
    processes started afterwards register it too."""
    profile = register_profile(load_profile_file(path))
    path = os.path.abspath(str(path))
    known = [p for p in os.environ.get(PROFILE_FILES_ENV, "").split(os.pathsep) if p]
    if path not in known:
        os.environ[PROFILE_FILES_ENV] = os.pathsep.join(known + [path])
    return profile


for _path in [p for p in os.environ.get(PROFILE_FILES_ENV, "").split(os.pathsep) if p]:
    register_profile(load_profile_file(_path))   # a worker of a command given --profile-file
