#!/usr/bin/env python3
"""ioctls per second of a VMM's mix through the client API and EmulatedTransport, and the cost
of each kind.  Usage: python benchmarks/emulator_throughput.py [CYCLES] [--profile]"""
import json
import sys

import _path  # noqa: F401

from pyiommufd.bench import emulator, top_functions

cycles = int(next((a for a in sys.argv[1:] if a.isdigit()), 20000))
res = emulator.ioctl_throughput(cycles=cycles)
res["us_per_ioctl_by_kind"] = emulator.per_op_costs()
if "--profile" in sys.argv:
    prof = emulator.profile_cycle(3000)
    res["layers_share_cprofile"] = emulator.layer_shares(prof)
    res["top_functions"] = top_functions(prof)
print(json.dumps(res, indent=2))
