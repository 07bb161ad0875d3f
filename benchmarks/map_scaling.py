#!/usr/bin/env python3
"""map/unmap cost with SMALL and with LARGE live mappings in one IOAS (default 10^3 and 10^6).
Usage: python benchmarks/map_scaling.py [SMALL LARGE] [--profile]"""
import json
import sys

import _path  # noqa: F401

from pyiommufd.bench import emulator, top_functions

sizes = [int(a) for a in sys.argv[1:] if a.isdigit()] or [1000, 1_000_000]
res = emulator.map_scaling(sizes[0], sizes[1], progress=lambda m: print(m, file=sys.stderr))
if "--profile" in sys.argv:
    res["top_functions_large"] = top_functions(emulator.profile_probe(sizes[1]))
print(json.dumps(res, indent=2))
