"""Documentation that cannot drift: README.md, docs/*.md and tests/README.md name only what exists. Every file
path they name (repository paths, package-relative module paths, ../shared paths, links), every
`megatron_tibetan.x.y` they cite, every flag they show for a tool (tools/*.py, their console scripts,
python -m megatron_tibetan.train), every `key.sub=value` override and config key, and every `make` target.
Each check is shown to fail on an injected error of its kind."""

from __future__ import annotations

import ast
import contextlib
import functools
import glob
import importlib.util
import io
import re
import shlex
import sys
from pathlib import Path

import pytest
from conftest import console_scripts

from megatron_tibetan.config import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "megatron_tibetan"
PAGES = [ROOT / "README.md", ROOT / "tests" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SUBPACKAGES = "text|tokenizer|data|models|convert|training|evaluation|launch|study"
SECTIONS = "|".join(f.name for f in TrainingConfig.__dataclass_fields__.values())
EDGE = r"(?<![\w./~$-])"  # a name starts here, not inside a longer path or word
PATH_CHARS = r"(?:[\w./*-]|\{[\w.,-]*\})*"  # a brace group may hold commas: flores200.dev.{bo,zh}
REPO_PATH = re.compile(EDGE + rf"((?:megatron_tibetan|tools|slurm|configs|benchmarks|tests|docs|\.ci)/{PATH_CHARS}"
                       rf"|Makefile|setup\.py|\.\./shared/{PATH_CHARS})")
PACKAGE_PATH = re.compile(EDGE + rf"((?:{SUBPACKAGES})/[\w/]*\w\.py)")
MODULE = re.compile(EDGE + r"(megatron_tibetan(?:\.\w+)+)")
CONFIG_KEY = re.compile(EDGE + rf"((?:{SECTIONS})\.[a-z_][\w.]*\w)(?=[=:\s`]|$)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
MAKE = re.compile(EDGE + r"make ([a-z][\w-]*)")
TOOL = re.compile(r"(?:python\s+)?(tools/\w+\.py|megatron-tibetan-[\w-]+|-m megatron_tibetan\.train)")
FILE_SUFFIX = re.compile(r"\.(py|json|jsonl|yaml|md|txt|sh|png|bin|idx)$")


def code_spans(text: str) -> list[str]:
    """Code blocks (continuation lines joined) and inline code spans: where commands, paths and keys are."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, re.M | re.S)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.M | re.S)
    commands = [line for b in blocks for line in re.sub(r"\\\n\s*", "", b).splitlines()]
    return commands + re.findall(r"`([^`\n]+)`", rest)


def _expand(path: str) -> list[str]:
    """Brace alternatives spelled out: flores200.dev.{bo,zh} -> flores200.dev.bo, flores200.dev.zh."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    return [p for alt in match.group(1).split(",") for p in _expand(path[: match.start()] + alt + path[match.end():])]


def _exists(path: Path) -> bool:
    return bool(glob.glob(str(path))) if "*" in str(path) else path.exists()


def missing_paths(text: str, page: Path) -> list[str]:
    found = []
    for span in code_spans(text):
        for name in REPO_PATH.findall(span):
            found += [f"path {p}" for p in _expand(name.rstrip(".-")) if not _exists(ROOT / p)]
        for name in PACKAGE_PATH.findall(span):
            if not (PACKAGE / name).exists() and not (ROOT / name).exists():
                found.append(f"path {name} (under megatron_tibetan/)")
    for target in LINK.findall(text):
        target = target.split("#")[0]
        if target and not re.match(r"\w+:", target) and not (page.parent / target).exists():
            found.append(f"link {target}")
    return found


def _module_file(dotted: str) -> Path | None:
    parts = dotted.split(".")
    # tools/ is installed as megatron_tibetan.tools (setup.py's package_dir)
    base = ROOT.joinpath("tools", *parts[2:]) if parts[:2] == ["megatron_tibetan", "tools"] else ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def _top_level_names(path: Path) -> frozenset[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def module_exists(dotted: str) -> bool:
    """``megatron_tibetan.a.b`` is a module, or ``...module.name[.attr]`` a name defined in one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        path = _module_file(".".join(parts[:cut]))
        if path is not None:
            rest = parts[cut:]
            return not rest or rest[0] in _top_level_names(path) or (path.name == "__init__.py" and
                                                                       _module_file(".".join(parts[:cut + 1])) is not None)
    return False


def missing_modules(text: str) -> list[str]:
    return [f"module {m}" for span in code_spans(text) for m in MODULE.findall(span) if not module_exists(m)]


def config_field(dotted: str) -> bool:
    obj = TrainingConfig()
    for part in dotted.split("."):
        fields = getattr(obj, "__dataclass_fields__", None)
        if fields is None:  # inside a mapping field (model.hf_config.hidden_size)
            return isinstance(obj, dict) or obj is None
        if part not in fields:
            return False
        obj = getattr(obj, part)
    return True


def unknown_config_keys(text: str) -> list[str]:
    found = []
    for span in code_spans(text):
        for key in CONFIG_KEY.findall(span):
            if FILE_SUFFIX.search(key) or config_field(key) or module_exists(f"megatron_tibetan.{key}"):
                continue
            found.append(f"config key {key}")
    return found


def _tool_file(name: str) -> Path:
    if name.startswith("megatron-tibetan-"):
        target = console_scripts()[name.removeprefix("megatron-tibetan-")]
        return ROOT / "tools" / (target.rsplit(".", 1)[1] + ".py") if ".tools." in target else PACKAGE / "train.py"
    return PACKAGE / "train.py" if "megatron_tibetan.train" in name else ROOT / name


@functools.lru_cache(maxsize=None)
def accepted_flags(tool: Path, sub: str | None) -> frozenset[str]:
    """The flags ``tool`` (``sub``: its sub-command) accepts, read from its own --help."""
    spec = importlib.util.spec_from_file_location(f"doc_tool_{tool.stem}", tool)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, argv = io.StringIO(), sys.argv
    sys.argv = [tool.name, *([sub] if sub else []), "--help"]
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
            module.main()
    finally:
        sys.argv = argv
    return frozenset(re.findall(r"(?<![\w-])--[\w-]+", out.getvalue()))


def unknown_flags(text: str) -> list[str]:
    found = []
    for span in code_spans(text):
        for match in TOOL.finditer(span):
            tool = _tool_file(match.group(1))
            if not tool.is_file():
                found.append(f"tool {match.group(1)}")
                continue
            rest = re.split(r"\s(?:\||;|&&|>|#)|\)|`", span[match.end():])[0]
            try:
                words = shlex.split(rest)
            except ValueError:
                words = rest.split()
            sub = words[0] if words and re.fullmatch(r"[a-z]+", words[0]) and "add_subparsers" in tool.read_text() else None
            flags = accepted_flags(tool, sub)
            found += [f"flag {w} of {match.group(1)}{' ' + sub if sub else ''}" for w in words
                      if re.fullmatch(r"--[a-z][\w-]*", w.split("=")[0]) and w.split("=")[0] not in flags]
    return found


def unknown_make_targets(text: str) -> list[str]:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    return [f"make target {t}" for span in code_spans(text) for t in MAKE.findall(span) if t not in targets]


def problems(text: str, page: Path) -> list[str]:
    return (missing_paths(text, page) + missing_modules(text) + unknown_config_keys(text) + unknown_flags(text)
            + unknown_make_targets(text))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_documentation_names_only_what_exists(page):
    found = problems(page.read_text(encoding="utf-8"), page)
    assert not found, f"{page.relative_to(ROOT)}:\n" + "\n".join(sorted(set(found)))


def test_readme_is_the_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250
    index = (ROOT / "docs" / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert page.name == "README.md" or f"({page.name})" in index, f"docs/README.md does not list {page.name}"


@pytest.mark.parametrize("bad, kind", [
    ("see `megatron_tibetan/training/loop_old.py`", "path"),
    ("the encoders (`data/encode.py`)", "path"),
    ("[the page](docs/missing.md)", "link"),
    ("`megatron_tibetan.data.encode.select_encoder`", "module"),
    ("`megatron_tibetan.text.normalize.no_such_rule`", "module"),
    ("```\npython tools/preprocess_data.py --input a \\\n    --output-prefix b --no-such-flag\n```", "flag"),
    ("```\npython tools/convert_checkpoint.py export --megatron a --hf b\n```", "flag"),
    ("```\nmegatron-tibetan-evaluate --hyp a --ref b --output c --beam 4\n```", "flag"),
    ("```\npython -m megatron_tibetan.train --config c.yaml --iterations 5\n```", "flag"),
    ("```\npython -m megatron_tibetan.train --config c.yaml train.iteration=5\n```", "config key"),
    ("set `checkpoint.strict_loading: true`", "config key"),
    ("```\nmake demo-full\n```", "make target"),
], ids=lambda x: x if x in ("path", "link", "module", "flag", "config key", "make target") else None)
def test_each_check_fails_on_an_injected_error(bad, kind):
    found = problems(bad, ROOT / "README.md")
    assert any(f.startswith(kind) for f in found), found
    # the same text without the error passes: the check reacts to the error, not to the page
    assert not problems("`megatron_tibetan/training/loop.py`, `megatron_tibetan.text.normalize.normalize`, "
                        "`python tools/preprocess_data.py --input a --output-prefix b`, `checkpoint.strict_load: true`, "
                        "`train.iterations=5`, `make demo`", ROOT / "README.md")
