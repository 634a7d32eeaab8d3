"""`pip install .` into a fresh virtual environment puts the project's commands on PATH, and they run
from anywhere (no checkout on sys.path): the console scripts of setup.py, each `--help`. The
environment borrows this one's dependencies through a .pth line (torch and megatron-core are not
installed twice); the project itself is built and installed as a user would."""

from __future__ import annotations

import ast
import site
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, str]:
    """setup.py's COMMANDS, read from its source."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "COMMANDS")
    return ast.literal_eval(node.value)


def test_pip_install_puts_the_commands_on_path(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run([str(python), "-c", "import megatron_tibetan.tools.evaluate as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(own_site), where  # the installed copy, not the checkout
    commands = _commands()
    assert len(commands) >= 10
    for name in commands:
        run = subprocess.run([str(venv / "bin" / f"megatron-tibetan-{name}"), "--help"], capture_output=True,
                             text=True, cwd=tmp_path)
        assert run.returncode == 0 and "usage:" in run.stdout, (name, run.stdout, run.stderr)
