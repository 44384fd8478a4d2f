"""Number field types for config models: no bools as numbers, no infinities or NaN.

YAML turns `true` into a bool and pydantic's lax mode turns a bool into 1, so a port of `true` became
port 1. Lax mode otherwise stays: `${PORT}` expands to a string of digits, and `1.5` is still refused for
an int ("fractional part").
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field


def _int_not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


def _number_not_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not a boolean")
    return value


StrictInt = Annotated[int, BeforeValidator(_int_not_bool)]
"""An int (or a string of digits, from `${NAME}`); never a bool."""

FiniteFloat = Annotated[float, BeforeValidator(_number_not_bool), Field(allow_inf_nan=False)]
"""A finite float (ints accepted); never a bool, `inf` or `nan`."""
