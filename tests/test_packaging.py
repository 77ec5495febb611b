"""The installed package, imported from outside the checkout as a user's program imports it."""

from __future__ import annotations

import subprocess
import sys

STAGES = ("fingerprint", "index", "matcher", "policy", "rescan", "service")


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_stages_install_under_refrain_and_no_generic_top_level_name(tmp_path):
    names = ", ".join(repr(stage) for stage in STAGES)
    done = _python(f"import importlib, importlib.util\n"
                   f"print([n for n in ({names},) if importlib.util.find_spec(n) is not None])\n"
                   f"import refrain.api, refrain.cli, refrain.service.app\n"
                   f"print([importlib.import_module('refrain.' + n).__name__ for n in ({names},)])\n", tmp_path)
    assert done.returncode == 0, done.stderr
    taken, imported = done.stdout.splitlines()
    assert taken == "[]"
    assert imported == str([f"refrain.{stage}" for stage in STAGES])


def test_a_users_own_index_py_does_not_shadow_refrain(tmp_path):
    for stage in STAGES:
        (tmp_path / f"{stage}.py").write_text(f"raise ImportError('the user\\'s own {stage}.py was imported')\n")
    done = _python("from refrain.api import Refrain\nimport refrain.service.app\nprint('ok')", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
