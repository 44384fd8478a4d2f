"""ConfigError and its parts: where a problem is (file, document, field path) and why.

pydantic ValidationErrors are converted here so every config problem reads the same way, e.g.
`pool.yaml: document 2 (InferenceModel "foo"): spec.criticality: must be one of Critical, Standard, Sheddable
(got "Urgent")`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

Loc = tuple[str | int, ...]

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_QUOTED = re.compile(r"'([^']*)'")
# Expanded values shorter than this are not scrubbed from messages: replacing "1" everywhere would garble
# document numbers, and such values are not credentials. Inputs taken from expanded fields are never shown.
MIN_REDACTED_LEN = 4


def format_loc(loc: Iterable[str | int]) -> str:
    """`('spec', 'targetModels', 1, 'weight')` -> `spec.targetModels[1].weight`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f'["{part}"]'
    return out


def show_value(value: object) -> str:
    """A scalar as it would appear in YAML, for `(got ...)`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


@dataclass(frozen=True, slots=True)
class DocumentRef:
    """One document of one source: 1-based index, its kind and metadata.name when it has them."""

    source: str
    index: int | None = None
    kind: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem: where it is and the reason."""

    where: DocumentRef
    reason: str
    path: str = ""
    line: int | None = None  # 1-based, for YAML syntax errors
    column: int | None = None

    def __str__(self) -> str:
        parts = [self.where.source]
        if self.line is not None:
            parts.append(f"line {self.line}" + (f", column {self.column}" if self.column is not None else ""))
        if self.where.index is not None:
            doc = f"document {self.where.index}"
            if self.where.kind:
                name = f' "{self.where.name}"' if self.where.name else ""
                doc += f" ({self.where.kind}{name})"
            parts.append(doc)
        if self.path:
            parts.append(self.path)
        parts.append(self.reason)
        return ": ".join(parts)


class Redactor:
    """Scrubs values that came from environment variables out of text meant for humans."""

    def __init__(self, values: Collection[str] = ()) -> None:
        self._values = sorted({v for v in values if len(v) >= MIN_REDACTED_LEN}, key=len, reverse=True)

    def __repr__(self) -> str:
        return f"Redactor({len(self._values)} values)"

    def redact(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, "***")
        return text


class ConfigError(ValueError):
    """Every configuration problem found, each naming file, document, field and reason."""

    def __init__(self, issues: Sequence[ConfigIssue], redactor: Redactor | None = None) -> None:
        redactor = redactor or Redactor()
        self.issues: tuple[str, ...] = tuple(redactor.redact(str(issue)) for issue in issues)
        if len(self.issues) == 1:
            message = self.issues[0]
        else:
            message = f"{len(self.issues)} configuration errors:\n" + "\n".join(f"  {i}" for i in self.issues)
        super().__init__(message)


def _reason(err: Any) -> str:
    kind = err["type"]
    msg: str = err["msg"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "enum":
        expected = _QUOTED.findall(err.get("ctx", {}).get("expected", ""))
        return "must be one of " + ", ".join(expected)
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    msg = msg.replace("Input should be", "must be")
    return msg[:1].lower() + msg[1:]


def _touches(loc: Loc, hidden: Collection[Loc]) -> bool:
    return any(loc[: len(h)] == h or h[: len(loc)] == loc for h in hidden)


def issues_from_validation_error(
    exc: ValidationError, where: DocumentRef, prefix: Loc = (), hidden: Collection[Loc] = ()
) -> list[ConfigIssue]:
    """One issue per pydantic error; inputs at or around `hidden` locations (expanded) are not shown."""
    issues = []
    for err in exc.errors(include_url=False):
        loc: Loc = (*prefix, *err["loc"])
        reason = _reason(err)
        value = err.get("input")
        if (
            err["type"] not in ("missing", "extra_forbidden")
            and isinstance(value, str | int | float | bool)
            and not _touches(loc, hidden)
        ):
            reason += f" (got {show_value(value)})"
        issues.append(ConfigIssue(where, reason, format_loc(loc)))
    return issues
