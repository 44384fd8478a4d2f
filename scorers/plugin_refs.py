"""Plugin parameters naming another plugin (`prefixPluginRef`, `loadPluginRef`): find it, check its type."""

from __future__ import annotations

from typing import TypeVar, overload

from epp.scheduling.plugins import PluginConfigError, PluginDeps

A = TypeVar("A")
B = TypeVar("B")


@overload
def resolve_plugin_ref(
    name: str, param: str, ref: str, deps: PluginDeps, accepted: tuple[type[A]], wanted: tuple[str]
) -> A: ...


@overload
def resolve_plugin_ref(
    name: str,
    param: str,
    ref: str,
    deps: PluginDeps,
    accepted: tuple[type[A], type[B]],
    wanted: tuple[str, str],
) -> A | B: ...


def resolve_plugin_ref(
    name: str,
    param: str,
    ref: str,
    deps: PluginDeps,
    accepted: tuple[type[object], ...],
    wanted: tuple[str, ...],
) -> object:
    """The plugin named `ref` by parameter `param` of plugin `name`, defined before it, an instance of one of
    `accepted`; `wanted` are those types' config names, for the errors (the first is the one suggested)."""
    found = deps.plugins.get(ref)
    if found is None:
        raise PluginConfigError(
            f"plugin {name!r}: parameter {param!r}: no plugin named {ref!r} is defined before it "
            f"(define a {wanted[0]!r} plugin with that name earlier in the config)"
        )
    if not isinstance(found, accepted):
        raise PluginConfigError(
            f"plugin {name!r}: parameter {param!r}: plugin {ref!r} is a {type(found).__name__}, "
            f"not a {' or '.join(repr(w) for w in wanted)}"
        )
    return found
