"""The container and the locked install, checked without a Docker engine: the image's entrypoint run
directly, and the Dockerfile, compose file and lock files read against the project."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import httpx
import yaml
from conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.MULTILINE)


def entrypoint_env(**extra) -> dict:
    """The environment of the image: the installed `refrain` first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def test_the_entrypoint_serves_on_the_data_directory_and_turns_ready(tmp_path):
    port = free_port()
    env = entrypoint_env(REFRAIN_INDEX_DIR=tmp_path / "data" / "index", REFRAIN_HOST="127.0.0.1", REFRAIN_PORT=port)
    server = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline, ready = time.monotonic() + 90, None
        while server.poll() is None and time.monotonic() < deadline:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/v1/health/ready", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        assert ready is not None and ready.json()["status"] == "ready", (server.poll(), ready)
    finally:
        server.send_signal(signal.SIGTERM)  # what `docker stop` sends; `exec` made refrain PID 1's heir
        stdout, stderr = server.communicate(timeout=30)
    assert server.returncode in (0, -15) and "Traceback" not in stderr, stderr
    assert (tmp_path / "data" / "index" / "manifest.json").exists()
    assert (tmp_path / "data" / "index.service.sqlite").exists() and (tmp_path / "data" / "index.jobs.sqlite").exists()
    logged = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert any(entry.get("route") == "/v1/health/ready" and entry["status"] == 200 for entry in logged), stdout


def test_the_entrypoint_warm_up_fills_numbas_cache_and_other_commands_go_to_refrain(tmp_path):
    cache = tmp_path / "numba-cache"
    warmed = subprocess.run(["sh", str(ENTRYPOINT), "warm-up"], env=entrypoint_env(NUMBA_CACHE_DIR=cache),
                            capture_output=True, text=True, timeout=600)
    assert warmed.returncode == 0, warmed.stderr
    assert warmed.stdout.strip() == "numba kernels compiled and cached"
    assert len(list(cache.rglob("*.nbi"))) >= 5  # the compiled kernels' index files
    version = subprocess.run(["sh", str(ENTRYPOINT), "--version"], env=entrypoint_env(), capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("refrain ")


def test_the_dockerfile_builds_a_slim_non_root_image_from_the_lock_with_every_package_and_a_warm_cache():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    user = instructions.index("USER refrain")
    assert instructions.index("RUN refrain-entrypoint warm-up") > user  # the cache belongs to the runtime user
    assert instructions.index('ENTRYPOINT ["refrain-entrypoint"]') > user
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install --require-hashes -r requirements-service.lock" in text
    assert "pip install --no-deps ." in text
    package_dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    copied = {match for match in re.findall(r"^COPY (\S+) ", text, re.MULTILINE)}
    top_folders = {folder.split("/")[0] for folder in package_dirs.values()}
    assert top_folders <= copied, top_folders - copied
    assert "docker/entrypoint.sh" in copied and "requirements-service.lock" in copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"requirements-service.lock", "pyproject.toml", "docker", *top_folders} & set(ignored)


def test_compose_runs_the_image_with_its_volume_on_loopback_and_the_rescan_cluster_on_request():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    service = compose["services"]["refrain"]
    assert service["build"] == "." and service["command"] == ["serve"]
    assert service["volumes"] == ["refrain-data:/data"] and "refrain-data" in compose["volumes"]
    assert all(port.startswith("127.0.0.1:") for port in service["ports"])
    for name in ("dask-scheduler", "dask-worker"):
        assert compose["services"][name]["image"] == service["image"]
        assert compose["services"][name]["profiles"] == ["cluster"]
    assert compose["services"]["dask-worker"]["volumes"] == ["refrain-data:/data:ro"]


def _pins(text: str) -> dict[str, str]:
    return {name.lower().replace("_", "-"): version for name, version in PIN.findall(text)}


def test_the_locks_pin_every_dependency_as_pyproject_does_with_hashes():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = _pins("\n".join(project["dependencies"]))
    dev = _pins("\n".join(project["optional-dependencies"]["dev"]))
    full_text = (ROOT / "requirements.lock").read_text()
    service_text = (ROOT / "requirements-service.lock").read_text()
    full, service = _pins(full_text), _pins(service_text)
    assert {**runtime, **dev}.items() <= full.items(), {**runtime, **dev}.items() - full.items()
    assert runtime.items() <= service.items() and not set(dev) & set(service)
    assert service.items() <= full.items()  # the container runs what CI tested
    for text in (full_text, service_text):
        entries = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
        assert all("--hash=sha256:" in entry for entry in entries if PIN.match(entry))


def test_make_and_ci_install_exactly_the_lock_and_check_it():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("$(VENV)/.installed: pyproject.toml $(LOCK)\n", 1)[1].split("\n\n", 1)[0]
    assert "pip install -q --require-hashes -r $(LOCK)" in recipe and "pip install -q --no-deps -e ." in recipe
    assert "-e '.[dev]'" not in recipe  # nothing resolved outside the lock
    ci = (ROOT / ".ci" / "run").read_text()
    assert ci.index("make test") < ci.index("make lock-check") < ci.index("make image")
    assert "if docker info >/dev/null 2>&1; then" in ci
