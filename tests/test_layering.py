"""Imports run one way, down the data flow (../shared/DESIGN.md): a lower layer never imports a higher one,
not even inside a function, and the library never imports tools/ or benchmarks/. Read from the source
(ast), so it costs nothing and sees every import statement."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "megatron_tibetan"

# bottom to top; a module may import its own layer and the ones below
LAYERS = [
    {"config", "cpu", "checkpoint_dir", "distributed", "hf_dir", "presets", "run_measured"},
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
    """The layer name of a dotted module under the package: ``megatron_tibetan.data.gpt`` -> ``data``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import of a megatron_tibetan module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:  # relative: resolve against the file's package
                base = path.relative_to(PACKAGE.parent).with_suffix("").parts[: -node.level]
                found.append((node.lineno, ".".join([*base, node.module])))
            else:
                found.append((node.lineno, node.module))
            if node.module == "megatron_tibetan":  # from megatron_tibetan import checkpoint_dir, ...
                found += [(node.lineno, f"megatron_tibetan.{a.name}") for a in node.names]
    return found


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
