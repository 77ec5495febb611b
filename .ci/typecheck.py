"""Type-check Refrain's library packages (mypy), as they are installed: under the one name ``refrain``.

The stage folders sit at the repository root and install as ``refrain.<stage>`` through
setuptools' ``package-dir`` (pyproject.toml), which mypy cannot follow. This lays the
same tree out with symbolic links in a temporary folder and checks it there.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The library: what the CLI and the service are thin shells over.
LIBRARY = ["refrain.fingerprint", "refrain.index", "refrain.matcher", "refrain.policy", "refrain.rescan"]
LIBRARY_MODULES = ["refrain.api", "refrain.config", "refrain.tuning"]


def main() -> int:
    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    with tempfile.TemporaryDirectory() as view:
        for package, folder in mapping.items():
            if package.count(".") == 1:   # refrain.<stage>: the whole folder, subpackages included
                (Path(view) / "refrain").mkdir(exist_ok=True)
                (Path(view) / package.replace(".", "/")).symlink_to(ROOT / folder)
        for module in (ROOT / mapping["refrain"]).glob("*.py"):
            (Path(view) / "refrain" / module.name).symlink_to(module)
        arguments = [a for p in LIBRARY for a in ("-p", p)] + [a for m in LIBRARY_MODULES for a in ("-m", m)]
        return subprocess.call([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                                *arguments], cwd=view)


if __name__ == "__main__":
    raise SystemExit(main())
