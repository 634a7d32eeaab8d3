"""`pip install .` into a fresh virtual environment puts the project's commands on PATH, and they run
from anywhere (no checkout on sys.path): every console script of setup.py is there, and three of them run `--help`. The
environment borrows this one's dependencies through a .pth line (torch and megatron-core are not
installed twice); the project itself is built and installed as a user would."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

from conftest import console_scripts

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_puts_the_commands_on_path(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    own_site = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    source = tmp_path / "source"  # a copy: building in the checkout would leave build/ there
    source.mkdir()
    shutil.copy(ROOT / "setup.py", source)
    for folder in ("megatron_tibetan", "tools"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(source)],
                             capture_output=True, text=True, cwd=tmp_path)
    assert install.returncode == 0, install.stdout + install.stderr
    where = subprocess.run([str(python), "-c", "import megatron_tibetan.tools.evaluate as m; print(m.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(own_site), where  # the installed copy, not the checkout
    commands = console_scripts()
    assert len(commands) >= 10 and all((venv / "bin" / f"megatron-tibetan-{name}").is_file() for name in commands)
    for name in ("preprocess", "train", "evaluate"):  # each runs (an import of every layer between them)
        run = subprocess.run([str(venv / "bin" / f"megatron-tibetan-{name}"), "--help"], capture_output=True,
                             text=True, cwd=tmp_path)
        assert run.returncode == 0 and "usage:" in run.stdout, (name, run.stdout, run.stderr)
