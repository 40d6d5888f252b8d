"""File name templates from config, such as ``archive/{table}/{date}.csv.gz``."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def check(template: str, allowed: Sequence[str]) -> None:
    """Raise ValueError naming the first placeholder not in ``allowed``."""
    for name in _PLACEHOLDER.findall(template):
        if name not in allowed:
            known = ", ".join("{" + placeholder + "}" for placeholder in allowed)
            raise ValueError(f"unknown placeholder {{{name}}} (placeholders: {known})")


def fill(template: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def pattern(template: str, fixed: Mapping[str, str]) -> str:
    """A glob: placeholders in ``fixed`` filled in, every other one a ``*``."""
    return _PLACEHOLDER.sub(lambda match: fixed.get(match.group(1), "*"), template)


def matching(glob: str) -> list[Path]:
    """The paths an absolute glob matches, sorted."""
    path = Path(glob)
    root = Path(path.anchor)
    return sorted(root.glob(str(path.relative_to(root))))
