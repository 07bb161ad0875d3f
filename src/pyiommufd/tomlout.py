"""TOML out, for the subset scenario files use (``tomllib.loads`` gives it back): the corpus
generator and ``pyiommufd emulate --record`` write scenarios with it."""
from __future__ import annotations

import json


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return hex(v) if v > 0xFFFF else str(v)
    if isinstance(v, str):
        return json.dumps(v)   # a JSON string (ASCII, \uXXXX escapes) is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def to_toml(data: dict) -> str:
    """A scenario dict as TOML (the subset scenarios use); ``tomllib.loads`` gives it back."""
    lines = []
    for k, v in data.items():
        if not isinstance(v, (dict, list)) or (isinstance(v, list) and not (v and isinstance(v[0], dict))):
            lines.append(f"{toml_key(k)} = {toml_value(v)}")
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{toml_key(k)}]")
            lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    for k, v in data.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for entry in v:
                lines.append(f"\n[[{toml_key(k)}]]")
                lines += [f"{toml_key(kk)} = {toml_value(vv)}" for kk, vv in entry.items()]
    return "\n".join(lines) + "\n"
