"""The package's layering, as the README states it, checked on the source (function-level imports included).

cli → {report, fleet, measure, eval, engine, train, compress, accel} → {quant, kv, arch, kernels, loader, weights}
→ roofline → specs → {errors, io, corpus, inputs}: imports point down (or sideways within a layer) and never form a
cycle; another package is used only through its `__init__`; no private name crosses a module; `specs`,
`roofline`, `report` and `accel` import no torch, and `ridgeline --help` / `ridgeline analyze` start without it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import ridgeline

ROOT = Path(ridgeline.__file__).parent

#: top to bottom; a package may import its own layer or any layer below
LAYERS = (("cli",), ("report", "fleet", "measure", "eval", "engine", "train", "compress", "accel"),
          ("quant", "kv", "arch", "kernels", "loader", "weights"), ("roofline",), ("specs",),
          ("errors", "io", "corpus", "inputs"))
LAYER_OF = {name: i for i, layer in enumerate(LAYERS) for name in layer}
TORCH_FREE = ("specs", "roofline", "report", "accel")
HEAVY = ("torch", "transformers")


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import of `name`'s source, nested ones too."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out.append((base, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
    return out


def _package(module: str) -> str | None:
    """The top-level package (or root module such as `loader`) of a ridgeline module name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "ridgeline" else None


def _target(base: str, name: str) -> str:
    """The module an import resolves to: `from pkg import submodule` is the submodule."""
    return f"{base}.{name}" if f"{base}.{name}" in MODULES else base


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for mod in MODULES:
        for base, names, _ in _imports(mod):
            for target in {_target(base, n) for n in names} or {base}:
                if target in MODULES and target != mod:
                    graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_every_package_has_a_layer():
    packages = {_package(m) for m in MODULES} - {None}
    assert packages <= set(LAYER_OF), packages - set(LAYER_OF)


def test_module_graph_is_acyclic():
    # the root facade (`ridgeline/__init__`: load_model, RidgelineError) is left out: it sits above everything
    graph = {k: {t for t in v if t != "ridgeline"} for k, v in _graph().items() if k != "ridgeline"}
    assert _cycles(graph) == []


def test_package_graph_points_down_and_is_acyclic():
    edges: dict[str, set[str]] = defaultdict(set)
    upward = []
    for mod, targets in _graph().items():
        src = _package(mod)
        for t in targets:
            dst = _package(t)
            if src is None or dst is None or src == dst:
                continue
            edges[src].add(dst)
            if LAYER_OF[dst] < LAYER_OF[src]:
                upward.append(f"{mod} -> {t}")
    assert upward == []
    assert _cycles(edges) == []


def test_no_private_names_cross_modules_and_packages_are_used_through_their_api():
    bad = []
    for mod in MODULES:
        own = _package(mod)
        for base, names, line in _imports(mod):
            if not base.startswith("ridgeline."):
                continue
            where = f"{MODULES[mod].relative_to(ROOT.parent)}:{line}"
            private = [n for n in names if n.startswith("_") and not n.startswith("__") and _target(base, n) == base]
            if private and base != mod:
                bad.append(f"{where}: from {base} import {', '.join(private)}")
            pkg = _package(base)
            if pkg != own and pkg in LAYER_OF and base.count(".") > 1:
                bad.append(f"{where}: from {base} (use ridgeline.{pkg}'s public API)")
    assert bad == []


@pytest.mark.parametrize("package", TORCH_FREE)
def test_analytic_packages_never_import_torch(package):
    heavy = [f"{mod}: {base}" for mod in MODULES if _package(mod) == package
             for base, _, _ in _imports(mod) if base.split(".")[0] in HEAVY]
    assert heavy == []


@pytest.mark.parametrize("args", [["--help"], ["analyze", "-m", "smollm2-135m", "-d", "raspberry-pi-5", "--json"],
                                  ["devices"], ["formats"], ["techniques", "--json"]])
def test_analytic_commands_start_without_torch(args):
    code = ("import sys; from ridgeline.cli import app\n"
            "try:\n    app(%r)\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print(sorted(m for m in %r if m in sys.modules))") % (args, HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_cli_modules_and_commands_stay_small():
    """Each command is parse → one library call → render: no cli module over 250 lines, no function over 60."""
    too_long = []
    for path in sorted((ROOT / "cli").glob("*.py")):
        text = path.read_text()
        if text.count("\n") > 250:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.end_lineno - node.lineno + 1 > 60:
                too_long.append(f"{path.name}: {node.name} has {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []
