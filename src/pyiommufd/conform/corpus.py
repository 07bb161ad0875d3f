"""The conformance corpus: hand-written scenario files and seeded random op sequences.

Everything here is a list of ``Item(name, toml)``: the TOML text is what both sides parse
(the emulator on the host, the agent in the guest), so they cannot drift apart.

* ``hand_written()``: every scenario file shipped in ``pyiommufd/scenarios`` (the harness keeps
  those that fit a configuration), including the conformance ones under ``scenarios/conform``.
* ``sc_variants(items)``: a copy of each single-unit Intel scenario with the unit's Snoop
  Control flipped (expectations dropped), so one file is checked on both snoop-control settings.
* ``random_scenarios(seed, n, ...)``: n op sequences of 10-25 steps drawn from the scenario op
  table, biased towards valid references (names bound earlier, devices in a state where the op
  makes sense) but with a share of stale ids, unknown ids, unaligned IOVAs, zero lengths and the
  MSI window.  Deterministic: the same arguments give the same texts on every machine.
"""
from __future__ import annotations

import random
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..tomlout import to_toml

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
U64_MAX = (1 << 64) - 1
PAGE = 0x1000
MSI = 0xFEE00000


@dataclass(frozen=True)
class Item:
    name: str
    toml: str
    source: str = ""


# -- hand-written -----------------------------------------------------------------------------------
def hand_written(root: Path = SCENARIO_DIR) -> list[Item]:
    items = []
    for p in sorted(root.rglob("*.toml")):
        rel = p.relative_to(root)
        items.append(Item(str(rel.with_suffix("")), p.read_text(), str(p)))
    return items


def sc_variants(items: list[Item]) -> list[Item]:
    """Single-unit Intel scenarios with Snoop Control flipped, without their expectations."""
    out = []
    for it in items:
        data = tomllib.loads(it.toml)
        system = data.get("system", {})
        units = system.get("units", [{"name": "unit0"}])
        if system.get("iommu", "intel") != "intel" or len(units) != 1 or not data.get("devices"):
            continue
        if data.get("explore"):
            continue
        groups = [d.get("group", f"group-{d.get('name')}") for d in data["devices"]]
        if len(set(groups)) != len(groups):
            continue   # shared groups run behind the bridge, which QEMU gives snoop control on
        unit = dict(units[0])
        unit["snoop_control"] = not unit.get("snoop_control", True)
        steps = [{k: v for k, v in s.items() if k not in ("expect", "expect_by_profile")}
                 for s in data.get("steps", [])]
        new = {"name": f"{data.get('name', it.name)}@sc-{'on' if unit['snoop_control'] else 'off'}",
               "description": f"{it.name} with Snoop Control flipped (expectations dropped)",
               "system": dict(system, units=[unit]), "devices": data["devices"], "steps": steps}
        suffix = "sc-on" if unit["snoop_control"] else "sc-off"
        out.append(Item(f"{it.name}@{suffix}", to_toml(new), it.source))
    return out


# -- random -------------------------------------------------------------------------------------------
IOVAS = (0x1000, 0x2000, 0x100000, 0x101000, 0x102000, 0x104000, 0x200000, 0x400000, 0x10000000,
         0xFEDFE000, MSI, 0xFEEFF000, 0xFEF00000)
ODD_IOVAS = (0x100800, 0x0, 0xFFFFFFFFFFFFF000, 0x7FFFFFFFF000)
LENGTHS = (0x1000, 0x1000, 0x2000, 0x2000, 0x3000, 0x4000, 0x10000)
ODD_LENGTHS = (0, 0x800, 0x1800, 0x100000, U64_MAX)
WEIGHTS = {"ioas_alloc": 1.0, "map": 4.0, "unmap": 2.0, "bind": 3.0, "attach": 4.0, "replace": 1.5,
           "detach": 1.5, "unbind": 1.0, "hwpt_alloc": 2.0, "destroy": 1.5, "hw_info": 0.7}


class _Gen:
    def __init__(self, rng: random.Random, devices: list[str]):
        self.rng = rng
        self.devices = devices
        self.ioas: list[str] = []
        self.hwpt: list[str] = []      # names of HWPT ids (alloc or attach results)
        self.devnames: list[str] = []  # names of dev ids
        self.bound: set[str] = set()
        self.attached: set[str] = set()
        self.mapped: list[tuple] = []  # (ioas name, iova, length) of maps that may have worked
        self.n = {"ioas": 0, "hwpt": 0, "pt": 0, "dev": 0}
        self.steps: list[dict] = []

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def new_name(self, kind: str) -> str:
        self.n[kind] += 1
        return f"{kind}{self.n[kind]}"

    def ref(self, pool: list[str], p_valid: float = 0.85):
        if pool and self.chance(p_valid):
            return self.rng.choice(pool)
        return self.rng.randint(0, 9)

    def any_ref(self):
        names = self.ioas + self.hwpt + self.devnames
        return self.ref(names, 0.8)

    def device(self, prefer: set[str] | None, want: bool = True) -> str:
        pool = [d for d in self.devices if (d in prefer) == want] if prefer is not None else []
        if pool and self.chance(0.85):
            return self.rng.choice(pool)
        return self.rng.choice(self.devices)

    def iova(self) -> int:
        return self.rng.choice(ODD_IOVAS) if self.chance(0.08) else self.rng.choice(IOVAS)

    def length(self) -> int:
        return self.rng.choice(ODD_LENGTHS) if self.chance(0.08) else self.rng.choice(LENGTHS)

    def step(self) -> dict:
        weights = dict(WEIGHTS)
        if not self.ioas:
            weights["ioas_alloc"] = 6.0
        elif len(self.ioas) >= 3:
            weights["ioas_alloc"] = 0.2
        if not self.bound:
            weights["bind"] = 6.0
        elif len(self.bound) == len(self.devices):
            weights["bind"] = 0.4
        if not self.mapped:
            weights["unmap"] = 0.5
        op = self.rng.choices(list(weights), list(weights.values()))[0]
        return getattr(self, "op_" + op)()

    def op_ioas_alloc(self):
        name = self.new_name("ioas")
        self.ioas.append(name)
        return {"op": "ioas_alloc", "as": name}

    def op_map(self):
        s = {"op": "map", "ioas": self.ref(self.ioas, 0.92), "iova": self.iova(), "length": self.length()}
        if s["length"] == U64_MAX:     # emulator and guest both reserve user memory for a map
            s["length"] = 0x100000
        if self.chance(0.05):
            s["readable"] = s["writeable"] = False
        elif self.chance(0.05):
            s["writeable"] = False
        if isinstance(s["ioas"], str) and s["length"]:
            self.mapped.append((s["ioas"], s["iova"], s["length"]))
        return s

    def op_unmap(self):
        if self.chance(0.12):
            return {"op": "unmap", "ioas": self.ref(self.ioas, 0.9), "iova": 0, "length": U64_MAX}
        if self.mapped and self.chance(0.7):
            ioas, iova, length = self.rng.choice(self.mapped)
            if self.chance(0.2):     # a superset: whole areas and more
                iova, length = max(0, iova - PAGE), min(length + 2 * PAGE, U64_MAX)
            elif self.chance(0.15):  # a cut through the area
                length = max(PAGE, length // 2)
            return {"op": "unmap", "ioas": ioas, "iova": iova, "length": length}
        iova = self.iova()
        if self.chance(0.15):
            iova = min(iova + PAGE, U64_MAX)   # inside a mapping: cuts through it
        return {"op": "unmap", "ioas": self.ref(self.ioas, 0.9), "iova": iova, "length": self.length()}

    def op_bind(self):
        dev = self.device(self.bound, want=False)
        s = {"op": "bind", "device": dev}
        if self.chance(0.5):
            s["as"] = self.new_name("dev")
            self.devnames.append(s["as"])
        self.bound.add(dev)
        return s

    def op_attach(self, op: str = "attach"):
        dev = self.device(self.bound, want=True) if op == "attach" else self.device(self.attached, want=True)
        pool = self.ioas if self.chance(0.7) or not self.hwpt else self.hwpt
        s = {"op": op, "device": dev, "pt": self.ref(pool, 0.9)}
        if self.chance(0.7):
            s["as"] = self.new_name("pt")
            self.hwpt.append(s["as"])
        self.attached.add(dev)
        return s

    def op_replace(self):
        return self.op_attach("replace")

    def op_detach(self):
        dev = self.device(self.attached, want=True)
        self.attached.discard(dev)
        return {"op": "detach", "device": dev}

    def op_unbind(self):
        dev = self.device(self.bound, want=True)
        self.bound.discard(dev)
        self.attached.discard(dev)
        return {"op": "unbind", "device": dev}

    def op_hwpt_alloc(self):
        pool = self.ioas if self.chance(0.85) or not self.hwpt else self.hwpt
        s = {"op": "hwpt_alloc", "device": self.device(self.bound, want=True), "pt": self.ref(pool, 0.9)}
        r = self.rng.random()
        if r < 0.08:
            s["flags"] = ["NEST_PARENT"]
        elif r < 0.13:
            s["flags"] = ["DIRTY_TRACKING"]
        s["as"] = self.new_name("hwpt")
        self.hwpt.append(s["as"])
        return s

    def op_destroy(self):
        return {"op": "destroy", "id": self.any_ref()}

    def op_hw_info(self):
        return {"op": "hw_info", "device": self.device(self.bound, want=True)}


def random_scenario(rng: random.Random, name: str, n_devices: int, *, snoop_control: bool = True,
                    shared_group: bool = False, n_steps: int | None = None) -> dict:
    devices = [f"d{i}" for i in range(n_devices)]
    g = _Gen(rng, devices)
    steps = [g.op_ioas_alloc()] if rng.random() < 0.9 else []
    for _ in range(n_steps if n_steps is not None else rng.randint(10, 25)):
        steps.append(g.step())
    devs = [{"name": d, **({"group": "shared"} if shared_group else {})} for d in devices]
    layout = "one shared group" if shared_group else "a group each"
    return {"name": name,
            "description": f"seeded random op sequence ({n_devices} device(s), {layout}, "
                           f"snoop control {'on' if snoop_control else 'off'})",
            "system": {"iommu": "intel", "units": [{"name": "dmar0", "snoop_control": snoop_control}]},
            "devices": devs, "steps": steps}


def random_scenarios(seed: int, n: int, *, snoop_control: bool = True, shared_group: bool = False,
                     max_devices: int = 3, device_less: bool = False) -> list[Item]:
    """n deterministic random scenarios; ``device_less`` gives IOAS-only sequences (ioas_alloc,
    map, unmap, destroy) that also run on the selftest-mock configuration."""
    layout = "shared" if shared_group else "own"
    kind = "nodev" if device_less else f"{layout}-sc{'on' if snoop_control else 'off'}"
    items = []
    for i in range(n):
        rng = random.Random(f"pyiommufd-corpus:{seed}:{kind}:{i}")
        name = f"random/{kind}-s{seed}-{i:03d}"
        if device_less:
            data = _device_less(rng, name)
        else:
            lo = 2 if shared_group else 1
            data = random_scenario(rng, name, rng.randint(lo, max_devices), snoop_control=snoop_control,
                                   shared_group=shared_group)
        items.append(Item(name, to_toml(data), "random"))
    return items


def _device_less(rng: random.Random, name: str) -> dict:
    g = _Gen(rng, ["unused"])
    steps = [g.op_ioas_alloc()]
    weights = {"ioas_alloc": 1.0, "map": 5.0, "unmap": 3.0, "destroy": 1.5}
    for _ in range(rng.randint(10, 25)):
        op = rng.choices(list(weights), list(weights.values()))[0]
        steps.append(getattr(g, "op_" + op)())
    return {"name": name, "description": "seeded random IOAS-only op sequence",
            "system": {"iommu": "intel", "units": [{"name": "dmar0"}]}, "steps": steps}


def default_corpus(seed: int = 0, n_random: int = 50) -> list[Item]:
    """What ``pyiommufd conform`` runs without arguments."""
    hw = hand_written()
    items = hw + sc_variants([i for i in hw if i.name.startswith("conform/")])
    items += random_scenarios(seed, n_random, snoop_control=True)
    items += random_scenarios(seed, n_random, snoop_control=False)
    items += random_scenarios(seed, n_random, shared_group=True)
    items += random_scenarios(seed, max(1, n_random // 5), device_less=True)
    return items
