#!/usr/bin/env python3
"""Print the Promela model generated from a scenario (pyiommufd.bench.spin.promela).
Usage: python benchmarks/spin_model.py [SCENARIO.toml] [--profile NAME] > model.pml
       spin -a model.pml && gcc -O2 -o pan pan.c && ./pan -c0 -n"""
import sys

import _path  # noqa: F401

from pyiommufd.bench import BENCH_8
from pyiommufd.bench.spin import promela
from pyiommufd.scenario import load

args = sys.argv[1:]
path = next((a for a in args if a.endswith(".toml")), BENCH_8)
profile = args[args.index("--profile") + 1] if "--profile" in args else None
print(promela(load(path), profile), end="")
