"""The CRDs' CEL rules (`x-kubernetes-validations`) evaluated offline with cel-python, after the schema
defaults are applied, as the apiserver does on create.

Transition rules (those naming `oldSelf`) compare with a previous version of the object: there is none
offline, so they are skipped, as the apiserver skips them on create.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import celpy  # type: ignore[import-untyped,unused-ignore]
from celpy.adapter import json_to_cel  # type: ignore[import-untyped,unused-ignore]
from celpy.celtypes import BoolType  # type: ignore[import-untyped,unused-ignore]

_ENV = celpy.Environment()


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """`value` with the schema's `default`s filled in where a field is absent (structural defaulting)."""
    if isinstance(value, dict):
        out = dict(value)
        for name, sub in (schema.get("properties") or {}).items():
            if name not in out and "default" in sub:
                out[name] = copy.deepcopy(sub["default"])
            if name in out:
                out[name] = apply_defaults(sub, out[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            known = schema.get("properties") or {}
            out = {k: v if k in known else apply_defaults(extra, v) for k, v in out.items()}
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], item) for item in value]
    return value


def rule_failures(schema: dict[str, Any], value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, message) for every CEL rule of the schema that `value` (already defaulted) breaks."""
    for rule in schema.get("x-kubernetes-validations") or []:
        expression = rule["rule"]
        if "oldSelf" in expression:
            continue
        message = rule.get("message") or f"failed rule: {expression}"
        try:
            program = _ENV.program(_ENV.compile(expression))
            result = program.evaluate({"self": json_to_cel(value)})
        except Exception as exc:  # a compile or evaluation error is the apiserver's rejection too
            yield path, f"{message} (rule could not be evaluated: {exc})"
            continue
        if not (isinstance(result, bool | BoolType) and bool(result)):  # BoolType is an int
            yield path, message
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for name, sub in props.items():
            if name in value:
                yield from rule_failures(sub, value[name], f"{path}.{name}".lstrip("."))
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key, item in value.items():
                if key not in props:
                    yield from rule_failures(extra, item, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            yield from rule_failures(schema["items"], item, f"{path}.{i}".lstrip("."))
