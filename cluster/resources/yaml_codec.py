"""YAML in the seed's shape: safe loading only, PEMs written as `|-` blocks."""

from __future__ import annotations

from typing import Any

import yaml


class _BlockDumper(yaml.SafeDumper):
    """Safe dumper that writes multi-line strings (PEMs) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_BlockDumper.add_representer(str, _represent_str)


def dump_yaml(data: Any) -> str:
    """YAML text of plain data, keys in insertion order."""
    return yaml.dump(data, Dumper=_BlockDumper, sort_keys=False)
