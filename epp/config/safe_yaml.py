"""YAML for hostile config files: bounded size, depth and work, no silent surprises.

Config files are attacker-shaped input, so `ConfigLoader` (a `yaml.SafeLoader`) refuses, naming the
document, the field path and the line:

- anchors and aliases entirely. A config file has no need for them, and aliases are what makes a 500-byte
  "billion laughs" file expand to gigabytes; refusing them outright is simpler to reason about than an
  expansion budget, and `&`/`*` never appear in Kubernetes manifests written by hand or by kubectl.
- nesting deeper than MAX_DEPTH (composing and validating are recursive: 900 levels hit RecursionError).
- duplicate mapping keys (YAML takes the last value silently; a doubled key is a mistake or a smuggling
  attempt).
- non-finite floats (`.inf`, `.nan`): no weight, threshold or timeout means anything with them, and one
  `.inf` weight turns every score into NaN.
- numbers longer than MAX_NUMBER_CHARS: sexagesimal ints (`1:2:3:...`) are built in quadratic time.

MAX_CONFIG_BYTES bounds one file before any parsing.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent, Event
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

try:
    from yaml._yaml import CParser

    FAST_PARSER = True
except ImportError:  # PyYAML built without libyaml
    CParser = Parser  # type: ignore[assignment,misc]  # never instantiated: FAST_PARSER is False
    FAST_PARSER = False

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # 4 MiB: the largest real config is a few KiB
MAX_DEPTH = 64  # Kubernetes manifests nest ~10 levels; 64 keeps recursion far below Python's limit
MAX_NUMBER_CHARS = 100

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"


class UnsafeYAMLError(yaml.YAMLError):
    """A refused construct: where it is (document, field path, mark) and why."""

    def __init__(
        self,
        reason: str,
        mark: Any,  # yaml.error.Mark or libyaml's Mark: both have 0-based line and column
        document: int,
        path: tuple[str | int, ...],
        kind: str | None,
        name: str | None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.line: int | None = mark.line + 1 if mark is not None else None
        self.column: int | None = mark.column + 1 if mark is not None else None
        self.document = document
        self.path = path
        self.kind = kind
        self.name = name


class _ConfigComposer(Composer, SafeConstructor):
    """Composer that refuses anchors/aliases, deep nesting, duplicate keys and non-finite numbers.

    Mixed in front of a parser (pure Python or libyaml's) and a Resolver."""

    if TYPE_CHECKING:  # from the parser, which the stubs do not give Composer

        def peek_event(self) -> Event: ...

    # Set by compose_document; declared for the type checker (the mixin has no __init__ of its own).
    document_index: int = 0  # 1-based index of the document being composed
    _path: list[str | int]  # field path of the node being composed
    _depth: int
    _keys: list[dict[tuple[str, str], int]]  # line of each key seen, per mapping being composed
    _root: Node | None  # the document's root, for its kind and name in messages

    def compose_document(self) -> Node | None:
        self.document_index += 1
        self._path, self._depth, self._keys, self._root = [], 0, [], None
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        if self._root is None and parent is not None:
            self._root = parent
        step: list[str | int] = []
        if isinstance(index, int):
            step = [index]
        elif isinstance(index, Node):  # the value of a key
            step = [str(index.value) if isinstance(index, ScalarNode) else "?"]
        self._path += step
        event = self.peek_event()
        anchor = getattr(event, "anchor", None)  # aliases, scalars and collections have one
        if anchor is not None:
            what = f"alias *{anchor}" if isinstance(event, AliasEvent) else f"anchor &{anchor}"
            self._fail(
                f"{what}: anchors and aliases are not allowed in config files (write the value out)",
                event.start_mark,
            )
        if self._depth >= MAX_DEPTH:
            self._fail(f"nesting is deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        node: Node | None = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, ScalarNode):
            self._check_number(node)
        if isinstance(parent, MappingNode) and index is None and isinstance(node, ScalarNode):
            self._check_duplicate(node)
        del self._path[len(self._path) - len(step) :]
        return node

    def compose_mapping_node(self, anchor: Any) -> MappingNode:
        self._keys.append({})
        try:
            node: MappingNode = super().compose_mapping_node(anchor)
        finally:
            self._keys.pop()
        return node

    def _check_duplicate(self, key: ScalarNode) -> None:
        seen = self._keys[-1]
        ident = (key.tag, key.value)
        if ident in seen:
            self._path.append(str(key.value))
            self._fail(f'duplicate key "{key.value}" (first at line {seen[ident]})', key.start_mark)
        seen[ident] = key.start_mark.line + 1

    def _check_number(self, node: ScalarNode) -> None:
        if node.tag not in (_INT_TAG, _FLOAT_TAG):
            return
        if len(node.value) > MAX_NUMBER_CHARS:
            self._fail(f"number is longer than {MAX_NUMBER_CHARS} characters", node.start_mark)
        if node.tag == _INT_TAG:
            try:
                self.construct_yaml_int(node)
            except ValueError as exc:
                self._fail(f"invalid integer {node.value}: {exc}", node.start_mark)
        elif not math.isfinite(self.construct_yaml_float(node)):
            self._fail(f"{node.value} is not allowed: numbers must be finite", node.start_mark)

    def _fail(self, reason: str, mark: Any) -> None:
        kind, name = self._root_kind_and_name()
        raise UnsafeYAMLError(reason, mark, self.document_index, tuple(self._path), kind, name)

    def _root_kind_and_name(self) -> tuple[str | None, str | None]:
        """`kind` and `metadata.name` of the document so far (keys composed before the problem)."""
        kind = name = None
        if isinstance(self._root, MappingNode):
            for key, value in self._root.value:
                if not isinstance(key, ScalarNode):
                    continue
                if key.value == "kind" and isinstance(value, ScalarNode):
                    kind = str(value.value)
                elif key.value == "metadata" and isinstance(value, MappingNode):
                    name = next(
                        (
                            str(v.value)
                            for k, v in value.value
                            if isinstance(k, ScalarNode) and k.value == "name" and isinstance(v, ScalarNode)
                        ),
                        None,
                    )
        return kind, name


class ConfigLoader(_ConfigComposer, Reader, Scanner, Parser, Resolver):
    """Pure-Python SafeLoader with the checks of _ConfigComposer."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


class FastConfigLoader(_ConfigComposer, CParser, Resolver):
    """libyaml's scanner and parser (5x faster: a 4 MiB file in 3 s, not 15 s) with the same composer."""

    def __init__(self, stream: str) -> None:
        CParser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


def load_documents(text: str, into: list[Any]) -> None:
    """Append the documents of a YAML stream to `into` (kept up to an error, which is raised).

    libyaml parses; when it reports a syntax error the text is parsed again by PyYAML, whose messages
    and acceptance the loader has always had (syntax errors are rare and the text is bounded)."""
    start = len(into)
    if FAST_PARSER:
        try:
            _extend(FastConfigLoader(text), into)
            return
        except UnsafeYAMLError:
            raise
        except yaml.YAMLError:
            del into[start:]
    _extend(ConfigLoader(text), into)


def _extend(loader: ConfigLoader | FastConfigLoader, into: list[Any]) -> None:
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            into.append(loader.get_data())
    finally:
        loader.dispose()
