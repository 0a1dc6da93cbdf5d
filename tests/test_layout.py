"""The package's shape (docs/architecture.md): stage names, import graph, CLI wiring.

- every public stage name of ``core`` is a callable, whatever was imported first (the module
  named like a stage used to shadow the function once imported);
- the top-level imports of ``core`` and ``explorer`` form no cycle, and ``core`` never imports
  ``explorer`` at module level;
- every import goes down (or sideways) the layer order that docs/architecture.md lists (read
  from the document itself, so the document and the check cannot drift apart);
- every stage has one command with ``--preset``, ``--config`` and ``--set``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import core
from core.cli import COMMANDS, build_parser

ROOT = Path(__file__).resolve().parent.parent


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in ("core", "explorer"):
        for p in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


def _top_level_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module in modules:
                edges[name].add(node.module)
            elif isinstance(node, ast.Import):
                edges[name].update(a.name for a in node.names if a.name in modules)
    return edges


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative DFS, white/grey/black)."""
    colour = dict.fromkeys(edges, 0)
    for start in edges:
        if colour[start]:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        colour[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour[nxt] == 1:
                return path[path.index(nxt) :] + [nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                stack.append((nxt, iter(sorted(edges[nxt]))))
                path.append(nxt)
    return None


def test_no_import_cycle_and_core_does_not_import_the_app():
    modules = _modules()
    edges = _top_level_edges(modules)
    assert _cycle(edges) is None, f"import cycle: {' -> '.join(_cycle(edges))}"
    up = {m: sorted(d for d in deps if d.startswith("explorer")) for m, deps in edges.items()}
    assert not {m: d for m, d in up.items() if m.startswith("core") and d}


def _layers() -> tuple[list[set[str]], set[str]]:
    """The ``layers:`` and ``floor:`` lines of docs/architecture.md: groups bottom up, floor names."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    found = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(": ")
        if sep and key in ("layers", "floor"):
            found[key] = value
    assert set(found) == {"layers", "floor"}, "docs/architecture.md lost its layers:/floor: lines"
    groups = [{n.strip() for n in g.split(",")} for g in found["layers"].split("<")]
    return groups, {n.strip() for n in found["floor"].split(",")}


def _layer_of(module: str, groups: list[set[str]], floor: set[str]) -> int:
    """Index of ``module``'s layer: ``explorer.*`` by its package, ``core.X...`` by ``X``."""
    parts = module.split(".")
    name = parts[0] if parts[0] != "core" else ("floor" if len(parts) == 1 else parts[1])
    if name in floor:
        name = "floor"
    for i, group in enumerate(groups):
        if name in group:
            return i
    raise AssertionError(f"{module} has no layer in docs/architecture.md (add {name!r} there)")


def _upward(edges: dict[str, set[str]], groups: list[set[str]], floor: set[str]) -> list[str]:
    """Every edge ``a -> b`` where ``b`` sits in a higher layer than ``a``."""
    return [
        f"{a} -> {b}"
        for a, deps in sorted(edges.items())
        for b in sorted(deps)
        if _layer_of(b, groups, floor) > _layer_of(a, groups, floor)
    ]


def test_imports_follow_the_documented_layer_order():
    groups, floor = _layers()
    assert groups[0] == {"floor"} and len(groups) >= 10
    edges = _top_level_edges(_modules())
    assert _upward(edges, groups, floor) == []


def test_layer_check_fails_on_a_planted_upward_import():
    groups, floor = _layers()
    edges = _top_level_edges(_modules())
    edges["core.models.io"] = edges["core.models.io"] | {"core.generation.sample"}
    edges["core.atlas"] = edges["core.atlas"] | {"core.tokens.store"}
    assert _upward(edges, groups, floor) == [
        "core.atlas -> core.tokens.store",
        "core.models.io -> core.generation.sample",
    ]


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_is_named_like_a_stage():
    modules = _modules()
    for stage in core.STAGES:
        assert f"core.{stage}" not in modules, f"core/{stage} would shadow core.{stage}()"


@pytest.mark.parametrize("first", ["core.tokens.tokenize", "core.zoos.zoo", "core.cli"])
def test_stage_names_are_callables_whatever_was_imported_first(first):
    code = (
        f"import importlib, core; importlib.import_module({first!r}); "
        "bad = [n for n in core.STAGES if not callable(getattr(core, n))]; "
        "from core import tokenize, train, zoo; "
        "assert callable(tokenize) and callable(train) and callable(zoo); "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_installed_commands_reach_the_app_from_any_folder(tmp_path):
    """``weightatlas bench app`` imports ``explorer.bench``: the install must ship ``explorer``
    too, or the console script fails outside the repository (it did: ModuleNotFoundError)."""
    code = "import explorer.bench, explorer.jobs; print(explorer.bench.__name__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "explorer.bench"


def test_stage_functions_resolve_to_their_modules():
    for name, module in core.STAGES.items():
        fn = getattr(core, name)
        assert callable(fn) and fn.__module__ == module and fn.__name__ == name


def test_every_stage_has_one_command_with_preset_config_and_set():
    parser = build_parser()
    stages = [c for c in COMMANDS if c != "bench"]
    assert set(core.STAGES) <= set(stages)
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in stages:
        flags = {o for a in sub.choices[name]._actions for o in a.option_strings}
        assert {"--preset", "--config", "--set"} <= flags, (name, sorted(flags))


@pytest.mark.slow
def test_weightatlas_demo_end_to_end_at_ci_size(tmp_path):
    """``weightatlas demo --out DIR`` with no ``--from-atlas`` (it failed with ``'module' object is
    not callable`` when a stage module shadowed its function): zoo -> collect -> tokenize ->
    train -> embed -> evaluate -> export, then the exported atlas opens and reads back."""
    out, work = tmp_path / "demo", tmp_path / "work"
    r = subprocess.run(
        [sys.executable, "-m", "core.cli", "demo", "--preset", "ci", "--out", str(out),
         "--work", str(work)],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"written to {out}" in r.stdout
    from core.catalog import map_table
    from core.embeddings.table import load_embeddings

    table = map_table(out)
    emb = load_embeddings(out)
    assert len(table.ids) >= 4 and len(emb.ids) == len(table.ids)
    assert (work / "atlas" / "results" / "probes.json").is_file()
    assert (out / "backbone" / "model.safetensors").is_file()
