"""The rules the package tree keeps (docs/ARCHITECTURE.md), checked on the source with ``ast``.

* no import cycle inside ``sae_atoms`` (imports inside functions count);
* nothing outside ``sae_atoms/experiments/`` imports ``sae_atoms.experiments`` with an import
  statement (``cli`` reaches the subcommands by module name, through ``importlib``);
* ``sae_atoms.saes`` uses nothing of the package but ``aip`` and ``io``;
* no module is longer than 500 lines, no function or method longer than 60 (decorators and
  docstring included);
* no public function or method (``__init__`` and the other dunders included) takes more than 8
  parameters, ``self`` / ``cls`` not counted, ``*args`` / ``**kwargs`` counted;
* ``duplicates`` (when installed) finds no repeated code inside ``sae_atoms/``;
* the public API a notebook uses is at the top level, and ``import sae_atoms`` registers the
  architectures with SAELens.

Edges follow the import statements as written: ``import sae_atoms.x.y`` and ``from sae_atoms.x
import y`` (``y`` a submodule) point at that module, not at the packages above it that Python
also runs on first import (every module would otherwise depend on ``sae_atoms/__init__``).
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

PKG = "sae_atoms"
ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / PKG
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 8
SAES_MAY_USE = {f"{PKG}.aip", f"{PKG}.io"}


# --------------------------------------------------------------------------- the graph
def module_name(path: Path, src: Path = SRC, pkg: str = PKG) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([pkg, *parts])


def _resolve_relative(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def imports_of(tree: ast.AST, module: str, is_package: bool, modules: set[str], pkg: str = PKG) -> set[str]:
    """The package modules that ``module`` imports anywhere in its source (functions included)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else _resolve_relative(module, is_package, node.level, node.module)
            if base is None:
                continue
            # `from pkg.x import y`: the submodule pkg.x.y where y is one, else pkg.x itself
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            if name == pkg or name.startswith(pkg + "."):
                while name not in modules and "." in name:  # `import pkg.x.Name` style: the module part
                    name = name.rsplit(".", 1)[0]
                if name != module:
                    found.add(name)
    return found


def import_graph(src: Path = SRC, pkg: str = PKG) -> dict[str, set[str]]:
    files = {module_name(p, src, pkg): p for p in sorted(src.rglob("*.py"))}
    modules = set(files)
    return {m: imports_of(ast.parse(p.read_text(), str(p)), m, p.name == "__init__.py", modules, pkg)
            for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search, colours)."""
    colour = {n: 0 for n in graph}  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m, 0) == 1:
                return stack[stack.index(m):] + [m]
            if colour.get(m, 0) == 0:
                cyc = visit(m)
                if cyc:
                    return cyc
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour[n] == 0:
            cyc = visit(n)
            if cyc:
                return cyc
    return None


def long_functions(src: Path = SRC, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int]]:
    """``(path:line name, length)`` of every function or method longer than ``limit`` lines."""
    out = []
    for p in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(), str(p))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - start + 1
                if n > limit:
                    out.append((f"{p.relative_to(src.parent)}:{node.lineno} {node.name}", n))
    return out


def long_modules(src: Path = SRC, limit: int = MAX_MODULE_LINES) -> list[tuple[str, int]]:
    """``(path, lines)`` of every module longer than ``limit`` lines."""
    out = []
    for p in sorted(src.rglob("*.py")):
        n = len(p.read_text().splitlines())
        if n > limit:
            out.append((str(p.relative_to(src.parent)), n))
    return out


def _is_public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _n_parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> int:
    a = fn.args
    n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in fn.decorator_list)
    return n - 1 if method and not static and (a.posonlyargs or a.args) else n


def _public_functions(body: list[ast.stmt], prefix: str, method: bool):
    """``(qualified name, node, is_method)`` of the public functions and methods in ``body``:
    module-level functions, methods of public classes (nested public classes too); not the
    functions defined inside functions."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _is_public(node.name):
            yield f"{prefix}{node.name}", node, method
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            yield from _public_functions(node.body, f"{prefix}{node.name}.", True)


def wide_functions(src: Path = SRC, limit: int = MAX_PARAMETERS) -> list[tuple[str, int]]:
    """``(path:line name, parameters)`` of every public function or method with more than ``limit``
    parameters (``self`` / ``cls`` not counted)."""
    out = []
    for p in sorted(src.rglob("*.py")):
        for name, node, method in _public_functions(ast.parse(p.read_text(), str(p)).body, "", False):
            n = _n_parameters(node, method)
            if n > limit:
                out.append((f"{p.relative_to(src.parent)}:{node.lineno} {name}", n))
    return out


def library_imports_of_experiments(graph: dict[str, set[str]], pkg: str = PKG) -> dict[str, list[str]]:
    """``{module: [experiments it imports]}`` for the modules outside ``pkg.experiments``."""
    exp = f"{pkg}.experiments"
    inside = lambda m: m == exp or m.startswith(exp + ".")
    bad = {m: sorted(d for d in deps if inside(d)) for m, deps in graph.items() if not inside(m)}
    return {m: d for m, d in bad.items() if d}


# --------------------------------------------------------------------------- the checkers can fail
def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"a", "c"}}) is None
    assert find_cycle({"a": {"a"}}) == ["a", "a"]


def test_graph_reads_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pk"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pk import a\n")
    (pkg / "a.py").write_text("def f():\n    from pk.sub import b\n    return b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nimport pk.sub.c as c\n")
    (pkg / "sub" / "c.py").write_text("from . import b\n")
    g = import_graph(pkg, "pk")
    assert g["pk"] == {"pk.a"}
    assert g["pk.a"] == {"pk.sub.b"}
    assert g["pk.sub.b"] == {"pk.a", "pk.sub.c"}
    assert g["pk.sub.c"] == {"pk.sub.b"}
    assert find_cycle(g) in (["pk.a", "pk.sub.b", "pk.a"], ["pk.sub.b", "pk.sub.c", "pk.sub.b"])


def test_library_rule_flags_any_module_outside_experiments():
    g = {"pk": set(), "pk.cli": {"pk.experiments.run"}, "pk.lib": {"pk.experiments"}, "pk.experiments": set(),
         "pk.experiments.run": {"pk.lib", "pk.experiments"}, "pk.experimentsx": set(), "pk.other": {"pk.experimentsx"}}
    assert library_imports_of_experiments(g, "pk") == {"pk.cli": ["pk.experiments.run"], "pk.lib": ["pk.experiments"]}


def test_long_module_finder_counts_lines(tmp_path):
    (tmp_path / "ok.py").write_text("x = 1\n" * MAX_MODULE_LINES)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    assert long_modules(tmp_path) == [(f"{tmp_path.name}/sub/big.py", MAX_MODULE_LINES + 1)]


def test_wide_function_finder_counts_public_parameters_only(tmp_path):
    eight = ", ".join(f"a{i}" for i in range(MAX_PARAMETERS))
    (tmp_path / "m.py").write_text(
        f"def ok({eight}): pass\n"
        f"def wide({eight}, *, k=1): pass\n"
        f"def splat({eight}, **kw): pass\n"
        f"def _private({eight}, b): pass\n"
        f"def outer():\n    def inner({eight}, b): pass\n"
        f"class C:\n"
        f"    def __init__(self, {eight}): pass\n"
        f"    def method(self, {eight}, b): pass\n"
        f"    @classmethod\n    def make(cls, {eight}): pass\n"
        f"    @staticmethod\n    def static({eight}, b): pass\n"
        f"    def _hidden(self, {eight}, b): pass\n"
        f"    class Inner:\n        def __call__(self, {eight}, b): pass\n"
        f"class _Private:\n    def method(self, {eight}, b): pass\n")
    found = {where.split(" ", 1)[1]: n for where, n in wide_functions(tmp_path)}
    assert found == {"wide": 9, "splat": 9, "C.method": 9, "C.static": 9, "C.Inner.__call__": 9}


def test_long_function_finder_reports_name_and_length(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "m.py").write_text(f"def short():\n    return 1\n\n\nclass C:\n    def long(self):\n{body}\n")
    [(where, n)] = long_functions(tmp_path)
    assert where.endswith("m.py:6 long") and n == MAX_FUNCTION_LINES + 1


# --------------------------------------------------------------------------- the rules
GRAPH = import_graph()


def test_the_package_has_the_three_layers():
    assert f"{PKG}.saes.tsae" in GRAPH and f"{PKG}.saes.tsae_aip" in GRAPH
    assert {f"{PKG}.experiments.{m}" for m in ("geometry", "capacity", "steering", "reproduce", "report")} <= set(GRAPH)
    assert GRAPH[f"{PKG}.saes.tsae_aip"] >= {f"{PKG}.saes.tsae", f"{PKG}.aip"}  # the graph is not empty


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_library_does_not_import_experiments():
    bad = library_imports_of_experiments(GRAPH)
    assert not bad, f"library modules importing experiments: {bad}"


def test_saes_use_only_aip_and_io():
    saes = f"{PKG}.saes"
    bad = {m: sorted(d for d in deps if not (d == saes or d.startswith(saes + ".") or d in SAES_MAY_USE))
           for m, deps in GRAPH.items() if m == saes or m.startswith(saes + ".")}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"sae_atoms.saes may import only {sorted(SAES_MAY_USE)}: {bad}"


def test_no_module_longer_than_the_limit():
    too_long = long_modules()
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_function_longer_than_the_limit():
    too_long = long_functions()
    assert not too_long, f"functions over {MAX_FUNCTION_LINES} lines: {too_long}"


def test_no_public_function_with_more_than_the_limit_of_parameters():
    wide = wide_functions()
    assert not wide, f"public functions with over {MAX_PARAMETERS} parameters: {wide}"


@pytest.mark.skipif(shutil.which("duplicates") is None, reason="the `duplicates` command is not installed")
def test_no_duplicated_code_in_the_package():
    res = subprocess.run(["duplicates", "--repo", PKG, "--seconds", "60"], cwd=ROOT, capture_output=True, text=True)
    out = res.stdout + res.stderr
    assert "incomplete" not in out, out
    assert out.startswith("no duplicates"), out


# --------------------------------------------------------------------------- the public API
PUBLIC = ("TSAETrainingSAEConfig", "TSAETrainingSAE", "TSAESAEConfig", "TSAESAE",
          "TSAEAIPTrainingSAEConfig", "TSAEAIPTrainingSAE", "TSAEAIPSAEConfig", "TSAEAIPSAE",
          "AIPMetric", "train_on_activations", "to_jumprelu", "load_model")


def test_public_api_at_the_top_level():
    import sae_atoms
    from sae_atoms.aip import AIPMetric
    from sae_atoms.models import load_model
    from sae_atoms.saes import TSAEAIPTrainingSAEConfig, to_jumprelu
    from sae_atoms.training import train_on_activations

    missing = [n for n in PUBLIC if not hasattr(sae_atoms, n)]
    assert not missing, missing
    assert set(PUBLIC) <= set(sae_atoms.__all__)
    assert sae_atoms.AIPMetric is AIPMetric and sae_atoms.load_model is load_model
    assert sae_atoms.TSAEAIPTrainingSAEConfig is TSAEAIPTrainingSAEConfig
    assert sae_atoms.to_jumprelu is to_jumprelu and sae_atoms.train_on_activations is train_on_activations


@pytest.mark.slow
def test_import_registers_the_architectures_with_saelens():
    code = ("from sae_lens.registry import SAE_CLASS_REGISTRY as I, SAE_TRAINING_CLASS_REGISTRY as T\n"
            "assert 'tsae_aip' not in T and 'tsae' not in T\n"
            "import sae_atoms\n"
            "for n in ('tsae', 'tsae_aip'):\n"
            "    assert I[n][0].__module__ == T[n][0].__module__ == 'sae_atoms.saes.' + n, (n, I[n], T[n])\n"
            "print('ok')\n")
    import sys

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
