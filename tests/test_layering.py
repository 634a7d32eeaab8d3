"""Imports run one way, down the data flow (../shared/DESIGN.md): a lower layer never imports a higher one,
not even inside a function, the library never imports tools/ or benchmarks/, and no module imports one
that imports it back (directly or round a longer circle, inside a layer too). Read from the source (ast),
so it costs nothing and sees every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_tibetan"

# bottom to top; a module may import its own layer and the ones below
LAYERS = [
    {"config", "cpu", "checkpoint_dir", "distributed", "hf_dir", "precision", "presets", "run_measured"},
    {"text"},
    {"tokenizer"},
    {"data"},
    {"models"},
    {"convert"},
    {"training"},
    {"evaluation"},
    {"launch", "train", "study"},
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def component(module: str) -> str:
    """The layer name of a dotted module under the package: ``megatron_tibetan.data.pretraining`` -> ``data``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _from_module(node: ast.ImportFrom, path: Path) -> str:
    """The dotted module of ``from X import ...`` (a relative X resolved against the file's package)."""
    if not node.level:
        return node.module
    base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
    return ".".join([*base, node.module])


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import of a megatron_tibetan module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, _from_module(node, path)))
            if node.module == "megatron_tibetan":  # from megatron_tibetan import checkpoint_dir, ...
                found += [(node.lineno, f"megatron_tibetan.{a.name}") for a in node.names]
    return found


def module_file(root: Path, module: str) -> Path | None:
    """The source file of a dotted module under ``root`` (a package's __init__.py), or None."""
    base = root.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_files(path: Path, root: Path) -> set[Path]:
    """The files under ``root`` that ``path`` imports: ``from pkg import mod`` is an import of pkg/mod.py,
    ``from mod import name`` of mod.py."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {module_file(root, a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = _from_module(node, path)
            subs = {module_file(root, f"{module}.{a.name}") for a in node.names}
            found |= subs - {None} if len(subs - {None}) == len(node.names) else (subs | {module_file(root, module)})
    return found - {None, path}


def import_cycles(package: Path) -> list[list[str]]:
    """Every circle of imports among the modules of ``package`` (function-local imports included), each
    as the files along it, found by a depth-first search over the import graph."""
    root = package.parent
    files = sorted(package.rglob("*.py"))
    graph = {f: sorted(imported_files(f, root)) for f in files}
    cycles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(node, path):
        state[node] = 1
        path.append(node)
        for target in graph.get(node, []):
            if state.get(target) == 1:
                cycles.append([str(c.relative_to(root)) for c in path[path.index(target):] + [target]])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[node] = 2

    for f in files:
        if f not in state:
            visit(f, [])
    return cycles


def own_component(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def test_every_module_has_a_layer():
    unknown = {own_component(p) for p in PACKAGE.rglob("*.py")} - set(LEVEL) - {"__init__"}
    assert not unknown, f"modules with no layer in the layering test: {sorted(unknown)}"


def test_imports_run_down_the_layers():
    violations = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = own_component(path)
        if own == "__init__":
            continue
        for line, module in imports(path):
            if module.split(".")[0] in ("tools", "benchmarks", "tests"):
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}")
            if not module.startswith("megatron_tibetan.") or component(module) == "":
                continue
            target = component(module)
            if target not in LEVEL:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} (no layer)")
            elif LEVEL[target] > LEVEL[own]:
                violations.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {own} imports higher layer {module}")
    assert not violations, "\n".join(violations)


def test_the_check_finds_an_upward_import(tmp_path):
    """The test itself can fail: a models/ module importing training/ inside a function is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from megatron_tibetan.training import checkpoint\n")
    (line, module), = imports(bad)
    assert line == 2 and LEVEL[component(module)] > LEVEL["models"]


def test_no_import_cycle():
    cycles = import_cycles(PACKAGE)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_circle_inside_one_layer(tmp_path):
    """The cycle check can fail: two tokenizer/ modules importing each other (one inside a function, as
    the old extension dispatcher did) and a three-module circle are both found; a clean chain is not."""
    package = tmp_path / "megatron_tibetan"
    (package / "tokenizer").mkdir(parents=True)
    for name, body in {"__init__.py": "", "tokenizer/__init__.py": "",
                       "tokenizer/a.py": "from megatron_tibetan.tokenizer.b import x\n",
                       "tokenizer/b.py": "def f():\n    from megatron_tibetan.tokenizer import a\n",
                       "tokenizer/c.py": "import megatron_tibetan.tokenizer.d\n",
                       "tokenizer/d.py": "from megatron_tibetan.tokenizer.e import y\n",
                       "tokenizer/e.py": "from megatron_tibetan.tokenizer.c import z\n",
                       "tokenizer/f.py": "from megatron_tibetan.tokenizer.a import x\n"}.items():
        (package / name).write_text(body)
    found = {tuple(sorted(set(c))) for c in import_cycles(package)}
    short = lambda *names: tuple(sorted(f"megatron_tibetan/tokenizer/{n}.py" for n in names))
    assert found == {short("a", "b"), short("c", "d", "e")}, found
