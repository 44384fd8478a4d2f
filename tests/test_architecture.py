"""Architecture checks (docs/architecture.md): no import cycles, the layer rules, bench kept out of `epp`.

Static checks parse every module of epp/, scorers/, metrics_scraper/, gateway/ and bench/ with `ast`; nothing
is imported. An import is *eager* (runs when the module is imported), *type* (under `if TYPE_CHECKING:`) or
*lazy* (inside a function). Cycles are looked for among eager imports only; the layer rules apply to every
import, except that a lazy import of bench is judged by the entry-point allowlist instead.

A rule the current code breaks is listed in KNOWN_*: the rule's test passes as long as nothing else breaks
it, and the `xfail(strict=True)` test named after the violation starts failing once it is fixed, so the
entry gets removed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("epp", "scorers", "metrics_scraper", "gateway", "bench")

# -- the layers -------------------------------------------------------------------------------------------
VOCABULARY = "vocabulary & framework"
SCORERS = "plugins: scorers"
SCRAPER = "plugins: metrics_scraper"
REQUEST_CONTROL = "request control"
SERVICES = "shared services"
SERVERS = "front end: epp.servers"
GATEWAY = "front end: gateway"
RUNTIME = "runtime utilities"
COMPOSITION = "composition root & CLI"
TOOLING = "tooling"

# Module prefix -> layer; the longest prefix (whole dotted components) wins. `epp` alone matches only the
# package itself (its __init__), so every new module under epp/ has to be placed here explicitly.
LAYER_OF: dict[str, str] = {
    "epp": VOCABULARY,
    "epp.config": VOCABULARY,
    "epp.datastore": VOCABULARY,
    "epp.health": VOCABULARY,
    "epp.request": VOCABULARY,
    "epp.routes": VOCABULARY,
    "epp.limits": VOCABULARY,
    "epp.scheduling": VOCABULARY,
    "epp.picking": VOCABULARY,
    "epp.pod_auth": VOCABULARY,
    "scorers": SCORERS,
    "metrics_scraper": SCRAPER,
    "epp.requestcontrol": REQUEST_CONTROL,
    "epp.metrics": SERVICES,
    "epp.labelled_metrics": SERVICES,
    "epp.request_metrics": SERVICES,  # the llm-d/GIE request families (both planes)
    "epp.otel_metrics": SERVICES,  # OpenTelemetry GenAI gateway metrics
    "epp.config_reload": SERVICES,  # ConfigWatcher: reload on file change or SIGHUP
    "epp.model_catalog": SERVICES,
    "epp.discovery": SERVICES,  # pod discovery: Kubernetes list/watch, discovery file
    "epp.cache": SERVICES,  # the LLM response cache (exact + semantic tiers, cache-service client)
    "epp.traffic": VOCABULARY,
    "epp.kv_events": VOCABULARY,  # vLLM's KV-event wire format and a pod's cached-block set
    "epp.kv_events.subscriber": SERVICES,  # the ZMQ subscriber (opens sockets)
    "epp.tokenization": VOCABULARY,  # request -> the pod's token ids (local tokenizers read files at start)
    "epp.tokenization.vllm_http": SERVICES,  # a pod's POST /tokenize (network)
    "epp.kv_events.sources": SERVICES,  # a pod's publishers: config or GET /kv_event_sources
    "epp.kv_events.follower": SERVICES,  # one subscription per pod, resync on gaps/restarts
    "epp.kv_events.follower_status": SERVICES,  # per-pod stream status, epp_kv_events_* metrics
    "epp.servers": SERVERS,
    "gateway": GATEWAY,
    "epp.lifecycle": RUNTIME,
    "epp.embedded_http": RUNTIME,
    "epp.event_loop": RUNTIME,
    "epp.process_group": RUNTIME,
    "epp.workers": RUNTIME,  # `epp gateway --workers`: the forked-worker supervisor
    "epp.core": COMPOSITION,
    "epp.app": COMPOSITION,
    "epp.cli": COMPOSITION,
    "epp.picker_cli": COMPOSITION,
    "epp.cache.cli": COMPOSITION,  # `epp cache serve`
    "epp.envoy_gateway": COMPOSITION,
    "epp.config.cli": COMPOSITION,  # `epp config ...`
    "epp.servers.cli": COMPOSITION,  # `epp serve`
    "gateway.server": COMPOSITION,
    "gateway.cli": COMPOSITION,  # `epp gateway`
    "bench": TOOLING,
}
EXACT_ONLY = frozenset({"epp"})

_BELOW_COMPOSITION = frozenset(
    {VOCABULARY, SCORERS, SCRAPER, REQUEST_CONTROL, SERVICES, SERVERS, GATEWAY, RUNTIME, COMPOSITION}
)
# Layer -> the layers it may import (itself included where allowed).
ALLOWED: dict[str, frozenset[str]] = {
    VOCABULARY: frozenset({VOCABULARY}),
    SCORERS: frozenset({VOCABULARY, SCORERS}),
    SCRAPER: frozenset({VOCABULARY, SCRAPER}),
    REQUEST_CONTROL: frozenset({VOCABULARY, REQUEST_CONTROL}),
    SERVICES: frozenset({VOCABULARY, SERVICES}),
    SERVERS: frozenset({VOCABULARY, REQUEST_CONTROL, SERVICES, SERVERS}),
    GATEWAY: frozenset({VOCABULARY, REQUEST_CONTROL, SERVICES, GATEWAY}),
    RUNTIME: frozenset({RUNTIME}),
    COMPOSITION: _BELOW_COMPOSITION,
    TOOLING: _BELOW_COMPOSITION | {TOOLING},
}

# Layer rule violations in the current code: (importer, imported) -> the offending import.
KNOWN_LAYER_VIOLATIONS: dict[tuple[str, ...], str] = {}

# Functions outside bench that may import bench lazily (the subcommands that are bench's), and what from.
BENCH_ENTRY_POINTS: dict[tuple[str, str], tuple[str, ...]] = {
    # registers `epp bench`, `epp demo` and `epp sim` (epp.cli.SUBCOMMAND_MODULES)
    ("epp.cli", "build_parser"): ("bench.cli", "bench.sim.cli"),
    ("epp.envoy_gateway.cli", "run_up"): ("bench.envoy_stack",),  # `epp envoy up`
}
# Lazy bench imports from other functions: (importer, function, imported) -> the offending import.
KNOWN_BENCH_IMPORTS: dict[tuple[str, ...], str] = {}


# -- reading the code ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: str  # relative to the repository
    line: int
    kind: str  # "eager", "type" (under `if TYPE_CHECKING:`) or "lazy" (inside a function)
    function: str | None = None  # the enclosing function's qualified name, for a lazy import

    def where(self) -> str:
        return f"{self.path}:{self.line}"


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    """The dotted name of a .py file and whether it is a package's __init__."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


@cache
def discover() -> dict[str, tuple[Path, bool]]:
    modules: dict[str, tuple[Path, bool]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name, is_package = module_name(path, ROOT)
            modules[name] = (path, is_package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str, known: Iterable[str]) -> str:
    """`name`, or the longest of its prefixes that is a known module."""
    known = set(known)
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return name


def _string_tuple(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Tuple | ast.List):
        return [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return []


def collect_imports(
    module: str, is_package: bool, source: str, known: Iterable[str], path: str = "<string>"
) -> list[Import]:
    """Every import of a project module (one of PACKAGES) that `source` makes, with when it runs."""
    known = set(known)
    tree = ast.parse(source, filename=path)
    found: list[Import] = []

    def targets(node: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(node, ast.Import):
            return [_resolve(alias.name, known) for alias in node.names]
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source_module = ".".join([*base, *([node.module] if node.module else [])])
        else:
            source_module = node.module or ""
        out = []
        for alias in node.names:
            sub = f"{source_module}.{alias.name}"
            out.append(sub if sub in known else _resolve(source_module, known))
        return out

    def visit(body: Sequence[ast.stmt], kind: str, scope: tuple[str, ...], function: str | None) -> None:
        for node in body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in targets(node):
                    if target.split(".")[0] in PACKAGES:
                        found.append(Import(module, target, path, node.lineno, kind, function))
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = ".".join([*scope, node.name])
                visit(node.body, "lazy", (*scope, node.name), qualname)
            elif isinstance(node, ast.ClassDef):  # a class body runs when the module does
                visit(node.body, kind, (*scope, node.name), function)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.body, "lazy" if kind == "lazy" else "type", scope, function)
                visit(node.orelse, kind, scope, function)
            else:
                for field in ("body", "orelse", "finalbody"):
                    visit(getattr(node, field, None) or [], kind, scope, function)
                for handler in getattr(node, "handlers", None) or []:
                    visit(handler.body, kind, scope, function)
                for case in getattr(node, "cases", None) or []:
                    visit(case.body, kind, scope, function)

    visit(tree.body, "eager", (), None)
    if module == "epp.cli":
        # build_parser() imports each of SUBCOMMAND_MODULES with importlib.import_module.
        for node in tree.body:
            value: ast.expr | None
            if isinstance(node, ast.Assign):
                value, names = node.value, [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                value, names = node.value, [node.target.id]
            else:
                continue
            if value is not None and "SUBCOMMAND_MODULES" in names:
                for target in _string_tuple(value):
                    found.append(Import(module, target, path, node.lineno, "lazy", "build_parser"))
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    modules = discover()
    out: list[Import] = []
    for name, (path, is_package) in modules.items():
        rel = str(path.relative_to(ROOT))
        out.extend(collect_imports(name, is_package, path.read_text(encoding="utf-8"), modules, rel))
    return tuple(out)


def eager_graph(imports: Iterable[Import]) -> dict[str, set[str]]:
    """Module -> the modules importing it runs: the imported ones and their packages' __init__ (but not the
    importer's own packages, which are already being imported when it runs)."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.kind != "eager":
            continue
        parts = imp.imported.split(".")
        for n in range(1, len(parts) + 1):
            target = ".".join(parts[:n])
            if target != imp.importer and not imp.importer.startswith(target + "."):
                graph.setdefault(imp.importer, set()).add(target)
    return graph


# -- cycles -------------------------------------------------------------------------------------------------
def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One cycle path ([a, b, ..., a]) per strongly connected component that has one (Tarjan)."""
    edges = {node: sorted(set(targets)) for node, targets in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []

    def strongconnect(start: str) -> None:
        # iterative, so a long import chain cannot hit the recursion limit
        work: list[tuple[str, Iterator[str]]] = [(start, iter(edges.get(start, ())))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(edges.get(nxt, ()))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in edges.get(node, ()):
                    components.append(component)

    for node in sorted(edges):
        if node not in index:
            strongconnect(node)
    return [_cycle_in(sorted(c), edges) for c in sorted(components, key=min)]


def _cycle_in(component: list[str], edges: Mapping[str, list[str]]) -> list[str]:
    """The shortest cycle through the component's first node (breadth first inside the component)."""
    members = set(component)
    start = component[0]
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for nxt in edges.get(node, ()):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if nxt in members and nxt not in previous:
                    previous[nxt] = node
                    next_frontier.append(nxt)
        frontier = next_frontier
    raise AssertionError(f"no cycle through {start}")  # unreachable for a strongly connected component


# -- layers -------------------------------------------------------------------------------------------------
def layer_of(module: str) -> str | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYER_OF and (prefix not in EXACT_ONLY or prefix == module):
            return LAYER_OF[prefix]
    return None


def layer_violations(imports: Iterable[Import]) -> dict[tuple[str, str], str]:
    """(importer, imported) -> a message naming both modules and both layers."""
    out: dict[tuple[str, str], str] = {}
    for imp in imports:
        source, target = layer_of(imp.importer), layer_of(imp.imported)
        if source is None or target is None:
            continue  # test_every_module_has_a_layer reports it
        if target == TOOLING and imp.kind == "lazy" and source != TOOLING:
            continue  # judged by test_bench_is_imported_lazily_only_by_its_subcommands
        if target not in ALLOWED[source]:
            out.setdefault(
                (imp.importer, imp.imported),
                f"{imp.importer} ({source}) imports {imp.imported} ({target}) at {imp.where()} "
                f"[{imp.kind}]; {source} may import only: {', '.join(sorted(ALLOWED[source]))}",
            )
    return out


def lazy_bench_imports(imports: Iterable[Import]) -> dict[tuple[str, str, str], Import]:
    """Function-level imports of bench from outside bench: (importer, function, imported) -> import."""
    return {
        (imp.importer, imp.function or "", imp.imported): imp
        for imp in imports
        if imp.kind == "lazy" and layer_of(imp.imported) == TOOLING and layer_of(imp.importer) != TOOLING
    }


def _allowed_bench_import(importer: str, function: str, imported: str) -> bool:
    prefixes = BENCH_ENTRY_POINTS.get((importer, function), ())
    return any(imported == p or imported.startswith(p + ".") for p in prefixes)


# -- self-checks: the machinery can fail --------------------------------------------------------------------
def test_cycle_finder_finds_a_synthetic_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}, "f": {"f"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"], ["f", "f"]]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) == []
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5000)} | {"m5000": {"m0"}}  # deep, still found
    assert len(find_cycles(chain)[0]) == 5002
    # through a package's __init__: importing other.c runs pkg/__init__, which imports pkg.a -> other.c
    imports = [
        Import("pkg", "pkg.a", "pkg/__init__.py", 1, "eager"),
        Import("pkg.a", "other.c", "pkg/a.py", 1, "eager"),
        Import("other.c", "pkg.x", "other/c.py", 1, "eager"),
        Import("pkg.x", "pkg.a", "pkg/x.py", 1, "lazy", "f"),  # lazy: not an edge
    ]
    assert eager_graph(imports) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"other", "other.c"},
        "other.c": {"pkg", "pkg.x"},
    }
    assert find_cycles(eager_graph(imports)) == [["other.c", "pkg", "pkg.a", "other.c"]]


def test_import_collector_classifies_imports() -> None:
    source = """
from __future__ import annotations
import typing
from typing import TYPE_CHECKING
import epp.datastore
from epp.scheduling import types
from . import sibling
try:
    from scorers.builtin import default_registry
except ImportError:
    import metrics_scraper
if TYPE_CHECKING:
    from gateway.app import GatewayApp
if typing.TYPE_CHECKING:
    import bench.sim
class C:
    from epp.picking import error_reply
    def method(self):
        import bench.cli
def run():
    from epp.core import PickerCore
    def inner():
        import bench.demo
"""
    known = {"epp.datastore", "epp.scheduling.types", "epp.servers.sibling", "scorers.builtin", "bench.cli"}
    got = {
        (i.imported, i.kind, i.function)
        for i in collect_imports("epp.servers.x", False, source, known | {"epp.servers.x"})
    }
    assert got == {
        ("epp.datastore", "eager", None),
        ("epp.scheduling.types", "eager", None),
        ("epp.servers.sibling", "eager", None),
        ("scorers.builtin", "eager", None),
        ("metrics_scraper", "eager", None),
        ("gateway.app", "type", None),
        ("bench.sim", "type", None),
        ("epp.picking", "eager", None),
        ("bench.cli", "lazy", "C.method"),
        ("epp.core", "lazy", "run"),
        ("bench.demo", "lazy", "run.inner"),
    }


def test_layer_checker_reports_a_synthetic_violation() -> None:
    imports = [
        Import("epp.datastore", "epp.requestcontrol.director", "epp/datastore.py", 3, "eager"),
        Import("gateway.forward", "epp.servers.extproc", "gateway/forward.py", 4, "lazy", "f"),
        Import("epp.app", "bench.sim", "epp/app.py", 5, "eager"),
        Import("epp.app", "bench.sim", "epp/app.py", 6, "lazy", "g"),  # left to the bench allowlist
        Import("bench.cli", "epp.core", "bench/cli.py", 7, "eager"),
    ]
    violations = layer_violations(imports)
    assert set(violations) == {
        ("epp.datastore", "epp.requestcontrol.director"),
        ("gateway.forward", "epp.servers.extproc"),
        ("epp.app", "bench.sim"),
    }
    message = violations[("gateway.forward", "epp.servers.extproc")]
    assert "gateway.forward (front end: gateway)" in message
    assert "epp.servers.extproc (front end: epp.servers)" in message
    assert layer_of("epp.brand_new_module") is None and layer_of("epp") == VOCABULARY
    assert layer_of("epp.servers.cli") == COMPOSITION and layer_of("epp.servers.http") == SERVERS
    assert layer_of("epp.requestcontrol.lifecycle") == REQUEST_CONTROL  # not epp.request's layer


# -- the code -----------------------------------------------------------------------------------------------
def test_every_module_is_found_and_has_a_layer() -> None:
    modules = discover()
    assert {"epp.cli", "epp.core", "scorers.builtin", "metrics_scraper.scraper", "gateway.forward"} <= set(
        modules
    )
    unplaced = sorted(m for m in modules if layer_of(m) is None)
    assert not unplaced, f"place these modules in LAYER_OF (and docs/architecture.md): {unplaced}"
    assert all(key.split(".")[0] in PACKAGES for key in LAYER_OF)
    assert any(imp.kind == "eager" for imp in all_imports())


def test_imports_name_existing_modules() -> None:
    modules = set(discover())
    missing = sorted(
        f"{i.where()}: {i.importer} imports {i.imported}" for i in all_imports() if i.imported not in modules
    )
    assert not missing, "\n".join(missing)


def test_no_import_cycles() -> None:
    cycles = find_cycles(eager_graph(all_imports()))
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_layer_rules() -> None:
    imports = all_imports()
    edges = {(i.importer, i.imported) for i in imports}
    assert ("epp.servers.extproc", "epp.requestcontrol.director") in edges  # the checker sees the code
    assert ("gateway.forward", "epp.requestcontrol.lifecycle") in edges
    violations = layer_violations(imports)
    new = {key: msg for key, msg in violations.items() if key not in KNOWN_LAYER_VIOLATIONS}
    assert not new, "layer rule violations (docs/architecture.md):\n" + "\n".join(sorted(new.values()))


def test_bench_is_imported_lazily_only_by_its_subcommands() -> None:
    lazy = lazy_bench_imports(all_imports())
    bad = sorted(
        f"{imp.importer}.{imp.function} imports {imp.imported} at {imp.where()}"
        for key, imp in lazy.items()
        if not _allowed_bench_import(*key) and key not in KNOWN_BENCH_IMPORTS
    )
    assert not bad, "bench imported outside the bench/sim/demo/envoy-up subcommands:\n" + "\n".join(bad)
    assert ("epp.envoy_gateway.cli", "run_up", "bench.envoy_stack.stack") in lazy  # the checker sees them
    assert ("epp.cli", "build_parser", "bench.cli") in lazy  # SUBCOMMAND_MODULES, via importlib


def _current_violations() -> set[tuple[str, ...]]:
    imports = all_imports()
    return set(layer_violations(imports)) | set(lazy_bench_imports(imports))


# -- the installed command ----------------------------------------------------------------------------------
def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_importing_epp_cli_loads_no_bench_module() -> None:
    proc = _python(
        "import epp.cli, sys; print(sorted(m for m in sys.modules if m == 'bench' or m.startswith('bench.')))"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_epp_help_exits_0() -> None:
    script = Path(sys.executable).with_name("epp")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "epp.cli"]
    proc = subprocess.run(
        [*command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    for subcommand in ("serve", "gateway", "envoy", "bench", "sim", "demo", "config"):
        assert subcommand in proc.stdout


# The optional extras' top-level modules: [bench] matplotlib, locust; [peers] the Rust routers.
_OPTIONAL_EXTRAS = ("matplotlib", "locust", "sglang_router", "vllm_router")
_WITHOUT_EXTRAS = f"""
import json, sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_OPTIONAL_EXTRAS!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (an optional extra)", name=name)
        return None
sys.meta_path.insert(0, _Blocked())
import epp.cli
try:
    epp.cli.main(["--help"])
except SystemExit as exc:
    print(json.dumps(sorted(m for m in sys.modules if m.startswith("bench."))), file=sys.stderr)
    sys.exit(exc.code)
"""


def test_epp_help_works_without_optional_extras() -> None:
    """Every `epp` command builds the whole parser: bench's module-level imports run for `epp serve` too."""
    proc = _python(_WITHOUT_EXTRAS)
    assert proc.returncode == 0, proc.stderr[-2000:]
