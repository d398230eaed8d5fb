"""The repository's layout rules (docs/architecture.md), checked by parsing the source with `ast`.

- imports between folders: traces/ imports nothing of ours; engines/ only traces/; analysis/
  nothing of ours (it reads result files); bench/ may import traces/, engines/ and analysis/;
  nothing in the package imports tools/ or tests/. Imports inside functions count as well.
- no import cycle among the package's modules, counting module-level imports only (an import
  inside a function, or under `if TYPE_CHECKING:`, runs later and may close a cycle on purpose,
  for lazy loading). Such lazy cycles are allowed; when this was written there were two, both
  inside the reference engine: engines.reference.attention -> engines.reference.triton_attention
  (its Triton backend, imported on first use) -> engines.reference.attention, and
  engines.reference.engine_loop -> engines.reference.server (a type-only import under
  TYPE_CHECKING) -> engines.reference.engine_loop. `test_lazy_cycles_are_listed` prints the
  current ones with `pytest -s`.
- no module over MAX_LINES lines;
- no module-level `main` function in the package except the command line's (bench/cli/__init__.py);
  scripts under tools/ may have theirs;
- nothing refers to a file outside the repository: no team-brief file names, and of the shared
  folder beside the repository only its traces/ (where the real traces live, README.md).

Pure Python, no imports of the checked modules, no network.
"""
from __future__ import annotations

import ast
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("traces", "engines", "bench", "analysis")
OURS = (*PACKAGES, "tools", "tests")
MAX_LINES = 500
MAIN_ALLOWED = {"bench/cli/__init__.py"}

# what each package may import of ours (itself always)
ALLOWED = {
    "traces": set(),
    "engines": {"traces"},
    "analysis": set(),
    "bench": {"traces", "engines", "analysis"},
}

# team-brief files that live outside the repository (spelled in parts, so this file names none)
OUTSIDE_NAMES = tuple(n + ".md" for n in ("DESIGN", "ANCHORS", "STYLE"))
OUTSIDE_PATH = re.compile(r"\.\./shared/(?!traces\b)")
TEXT_SUFFIXES = (".py", ".md", ".toml", ".ipynb")


# --------------------------------------------------------------------------- source model

@dataclass(frozen=True)
class Import:
    target: str      # the module imported, resolved (a submodule where `from X import sub` names one)
    line: int
    lazy: bool       # inside a function (or under `if TYPE_CHECKING:`): not run at import time


@dataclass
class Module:
    name: str        # dotted: bench.cli, engines.reference
    path: Path
    rel: str         # repository-relative, with /
    tree: ast.Module
    lines: int
    is_package: bool


def _module_name(rel: Path) -> tuple[str, bool]:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def package_modules() -> dict[str, Module]:
    mods: dict[str, Module] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts:
                continue
            text = path.read_text(encoding="utf-8")
            name, is_pkg = _module_name(rel)
            mods[name] = Module(name, path, rel.as_posix(), ast.parse(text, filename=str(rel)),
                                len(text.splitlines()), is_pkg)
    return mods


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, lazy: bool):
    """(node, lazy) for every node below `node`: lazy once inside a function, a lambda or an
    `if TYPE_CHECKING:` body. Class bodies run at import time: not lazy."""
    for child in ast.iter_child_nodes(node):
        child_lazy = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        if isinstance(node, ast.If) and _is_type_checking(node.test) and child in node.body:
            child_lazy = True
        yield child, child_lazy
        yield from _walk(child, child_lazy)


def _resolve_relative(mod: Module, level: int, name: str | None) -> str:
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, name] if name else base)


def imports_of(mod: Module, known: set[str]) -> list[Import]:
    """Every import of `mod`, resolved: `import a.b` -> a.b; `from a import b` -> a.b when a.b
    is a module of ours, else a; relative imports against mod's package; importlib.import_module
    with a constant name counts as a lazy import."""
    out = []
    for node, lazy in _walk(mod.tree, False):
        if isinstance(node, ast.Import):
            out.extend(Import(a.name, node.lineno, lazy) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(mod, node.level, node.module) if node.level else (node.module or "")
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append(Import(sub if sub in known else base, node.lineno, lazy))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append(Import(node.args[0].value, node.lineno, True))
    return out


def _top(name: str) -> str:
    return name.split(".", 1)[0]


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    mods = package_modules()
    assert mods, f"no modules found under {PACKAGES} in {ROOT}"
    return mods


def _graph(mods: dict[str, Module], include_lazy: bool) -> dict[str, set[str]]:
    known = set(mods)
    g: dict[str, set[str]] = {m: set() for m in mods}
    for m in mods.values():
        for imp in imports_of(m, known):
            if imp.lazy and not include_lazy:
                continue
            # the nearest module of ours the import names (a.b.func -> a.b)
            t = imp.target
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != m.name:
                g[m.name].add(t)
    return g


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        work = [(v, iter(sorted(g[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(g[nxt]))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def _cycle_path(g: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete cycle through the component, for the message: a -> b -> a."""
    members = set(comp)
    start = comp[0]
    prev: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(g[v] & members):
            if w == start:
                path = [v]
                while prev[path[-1]] is not None:
                    path.append(prev[path[-1]])
                return " -> ".join([*reversed(path), start])
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return " <-> ".join(comp)


# --------------------------------------------------------------------------- import rules

def test_import_rules(modules):
    known = set(modules)
    bad = []
    for m in modules.values():
        pkg = _top(m.name)
        for imp in imports_of(m, known):
            other = _top(imp.target)
            if other in OURS and other != pkg and other not in ALLOWED[pkg]:
                bad.append(f"{m.rel}:{imp.line} imports {imp.target}" + (" (in a function)" if imp.lazy else ""))
    allowed = "; ".join(f"{p}/ -> {', '.join(x + '/' for x in sorted(a)) if a else 'nothing of ours'}" for p, a in ALLOWED.items())
    assert not bad, f"imports against the layout rules ({allowed}):\n  " + "\n  ".join(bad)


def test_package_imports_no_tools_or_tests(modules):
    known = set(modules)
    bad = [f"{m.rel}:{imp.line} imports {imp.target}" for m in modules.values()
           for imp in imports_of(m, known) if _top(imp.target) in ("tools", "tests")]
    assert not bad, "the package imports tools/ or tests/:\n  " + "\n  ".join(bad)


def test_no_module_level_import_cycles(modules):
    g = _graph(modules, include_lazy=False)
    cycles = _cycles(g)
    msg = [f"{_cycle_path(g, c)}  (files: {', '.join(modules[n].rel for n in c)})" for c in cycles]
    assert not cycles, "import cycles through module-level imports:\n  " + "\n  ".join(msg)


def test_lazy_cycles_are_listed(modules, capsys):
    """Cycles that only close through imports inside functions are allowed (lazy loading); they
    are printed (pytest -s) so that a new one is seen, never failed."""
    eager = {tuple(c) for c in _cycles(_graph(modules, include_lazy=False))}
    g = _graph(modules, include_lazy=True)
    lazy = [c for c in _cycles(g) if tuple(c) not in eager]
    with capsys.disabled():
        for c in lazy:
            print(f"\nlazy import cycle (allowed): {_cycle_path(g, c)}")


# --------------------------------------------------------------------------- sizes, entry points

def test_no_module_over_max_lines(modules):
    big = sorted((m.lines, m.rel) for m in modules.values() if m.lines > MAX_LINES)
    assert not big, f"modules over {MAX_LINES} lines:\n  " + "\n  ".join(f"{rel}: {n}" for n, rel in reversed(big))


def _module_level_defs(body: list[ast.stmt]):
    """Function definitions run at module level: top level, or inside module-level if/try/with."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, (ast.If, ast.For, ast.While, ast.With, ast.AsyncWith)):
            yield from _module_level_defs(node.body)
            yield from _module_level_defs(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            yield from _module_level_defs(node.body)
            for h in node.handlers:
                yield from _module_level_defs(h.body)
            yield from _module_level_defs(node.orelse)
            yield from _module_level_defs(node.finalbody)


def test_only_the_cli_defines_main(modules):
    bad = sorted(f"{m.rel}:{d.lineno}" for m in modules.values() if m.rel not in MAIN_ALLOWED
                 for d in _module_level_defs(m.tree.body) if d.name == "main")
    assert not bad, (f"module-level main() outside {', '.join(sorted(MAIN_ALLOWED))} (entry points belong to "
                     "the command line; scripts go to tools/):\n  " + "\n  ".join(bad))


# --------------------------------------------------------------------------- no outside references

def repository_text_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore (read-only `git ls-files`); without
    git, every file outside hidden folders, .venv and results/."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True, timeout=30).stdout.decode()
        names = [n for n in out.split("\0") if n]
    except (OSError, subprocess.SubprocessError):
        names = []
        for dirpath, dirnames, filenames in os.walk(ROOT):
            dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("results", "__pycache__")]
            names.extend(str(Path(dirpath, f).relative_to(ROOT)) for f in filenames)
    return sorted(ROOT / n for n in names if n.endswith(TEXT_SUFFIXES) and (ROOT / n).is_file())


def test_no_reference_outside_the_repository():
    defined = {n for n in OUTSIDE_NAMES if (ROOT / "docs" / n).exists()}  # a doc of that name makes it ours
    bad = []
    for path in repository_text_files():
        rel = path.relative_to(ROOT).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        for i, line in enumerate(text.splitlines(), 1):
            for name in OUTSIDE_NAMES:
                if name in line and name not in defined:
                    bad.append(f"{rel}:{i}: {name}")
            if OUTSIDE_PATH.search(line):
                bad.append(f"{rel}:{i}: {OUTSIDE_PATH.search(line).group(0)}... (only ../shared/traces is allowed)")
    assert not bad, ("references to files outside the repository (the docs live in docs/):\n  "
                     + "\n  ".join(bad))


# --------------------------------------------------------------------------- the checker itself

def test_checker_resolves_imports(tmp_path):
    """The resolver on a small made-up package: submodules named by `from X import Y`, relative
    imports, lazy imports, module-level main inside `if`."""
    src = {
        "p/__init__.py": "from p import a\n",
        "p/a.py": "from . import b\nfrom p.b import VALUE\ndef f():\n    import p.c\n",
        "p/b.py": "import p.a\nVALUE = 1\nif True:\n    def main():\n        pass\n",
        "p/c.py": "from ..q import x\n",
    }
    mods = {}
    for rel, text in src.items():
        name, is_pkg = _module_name(Path(rel))
        mods[name] = Module(name, Path(rel), rel, ast.parse(text), len(text.splitlines()), is_pkg)
    known = set(mods)
    got = {m: sorted((i.target, i.lazy) for i in imports_of(mods[m], known)) for m in mods}
    assert got["p"] == [("p.a", False)]
    assert got["p.a"] == [("p.b", False), ("p.b", False), ("p.c", True)]
    assert got["p.c"] == [("q", False)]
    g = _graph(mods, include_lazy=False)
    assert _cycles(g) == [["p.a", "p.b"]]
    assert [d.name for d in _module_level_defs(mods["p.b"].tree.body)] == ["main"]
