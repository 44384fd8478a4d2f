"""`${NAME}` references in string values, expanded from an environment mapping at load time.

`$${NAME}` is a literal `${NAME}`. Mapping keys are not expanded. The expansion records where it substituted
and which values it used, so errors and reprs can avoid showing them (they are usually API keys).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from epp.config.errors import ConfigIssue, DocumentRef, Loc, format_loc

_REFERENCE = re.compile(r"\$(\$?)\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(slots=True)
class Expansion:
    """The expanded value and what happened on the way."""

    value: Any = None
    expanded_paths: list[Loc] = field(default_factory=list)
    used_values: set[str] = field(default_factory=set, repr=False)
    missing: list[tuple[Loc, str]] = field(default_factory=list)  # (path, variable name)
    invalid: list[tuple[Loc, str]] = field(default_factory=list)  # (path, reference text)


def expand_env(data: Any, env: Mapping[str, str]) -> Expansion:
    """Expand references in every string value of `data` (nested dicts and lists); `data` is not modified."""
    result = Expansion()
    result.value = _expand(data, (), env, result)
    return result


def expansion_issues(expansion: Expansion, where: DocumentRef) -> list[ConfigIssue]:
    """One issue per unset variable and per malformed reference, each with its field path."""
    issues = [
        ConfigIssue(where, f"environment variable {variable} is not set", format_loc(loc))
        for loc, variable in expansion.missing
    ]
    for loc, ref in expansion.invalid:
        reason = f"invalid environment reference {ref}: use ${{NAME}} (letters, digits, _) or $${{ (literal)"
        issues.append(ConfigIssue(where, reason, format_loc(loc)))
    return issues


def _expand(node: Any, path: Loc, env: Mapping[str, str], result: Expansion) -> Any:
    if isinstance(node, dict):
        return {k: _expand(v, (*path, k), env, result) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, (*path, i), env, result) for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:
        return _expand_string(node, path, env, result)
    return node


def _expand_string(text: str, path: Loc, env: Mapping[str, str], result: Expansion) -> str:
    substituted = False

    def replace(match: re.Match[str]) -> str:
        nonlocal substituted
        escaped, name = match.group(1), match.group(2)
        if escaped:
            return "${" + name + "}"
        if not _NAME.match(name):
            result.invalid.append((path, match.group(0)))
            return match.group(0)
        if name not in env:
            result.missing.append((path, name))
            return match.group(0)
        substituted = True
        result.used_values.add(env[name])
        return env[name]

    expanded = _REFERENCE.sub(replace, text)
    if substituted:
        result.expanded_paths.append(path)
    return expanded
