"""Memory and CPU of the real service for one long upload: ``refrain serve`` answering a 20-minute track.

    flock /work/bench.lock python bench/service_long_upload.py ~/.cache/refrain-music \\
        --index /tmp/refrain-bench/index-150 [--minutes 20] [--json long-service.json]

INDEX (read-only; it is copied, since the service opens its index writable) must hold
the catalogue of the benches' split, as for ``bench/whole_tracks.py``. The upload is
made as that bench's lengths sweep makes it: catalogue tracks time-stretched to 0.9 laid
end to end to ``--minutes``, a 16-bit FLAC at 44.1 kHz (decoded and resampled by the
service). ``refrain serve`` runs in a process of its own on a loopback port; once it is
ready it is sent a 10 s upload (so that first-request costs are in the idle figure),
then its ``VmHWM`` is reset and the long upload sent once. Figures, from the server's
``/proc`` entries: RSS when idle, peak RSS during the long request and the difference;
the server's CPU seconds for the request (user + system: the machine may be shared)
and times realtime per core; the answer's verdict and the works found.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import soundfile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.accuracy import SOURCE_RATE  # noqa: E402
from bench.corpus import add_split_arguments, split  # noqa: E402
from bench.service import _free_port, _stop, _wait_for  # noqa: E402
from bench.fresh import status_mb  # noqa: E402
from bench.whole_tracks import stretched_upload  # noqa: E402
from refrain.api import Refrain  # noqa: E402


def proc_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post(client: httpx.Client, path: Path) -> httpx.Response:
    with open(path, "rb") as handle:
        return client.post("/v1/matches", files={"file": (path.name, handle, "audio/flac")})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_split_arguments(parser)
    parser.add_argument("--index", type=Path, required=True, help="an index of the split's catalogue (read-only)")
    parser.add_argument("--minutes", type=float, default=20.0, help="length of the long upload (default 20)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if not (args.index / "manifest.json").exists():
        parser.error(f"{args.index} is not a Refrain index (no manifest.json)")
    catalogue, _ = split(parser, args)

    with tempfile.TemporaryDirectory(prefix="refrain-bench-long-") as tmp:
        tmp = Path(tmp)
        index = tmp / "index"
        shutil.copytree(args.index, index, ignore=shutil.ignore_patterns(".lock"))
        with Refrain.open(index, mmap=True) as refrain:
            ids = {Path(t.source).name: track_id for track_id, t in refrain.store.catalog.ready_tracks().items()}
        x, laid_in = stretched_upload(catalogue, ids, args.minutes)
        upload, short = tmp / "long-upload.flac", tmp / "short-upload.flac"
        soundfile.write(upload, x, SOURCE_RATE, subtype="PCM_16")
        soundfile.write(short, x[:10 * SOURCE_RATE], SOURCE_RATE, subtype="PCM_16")
        seconds = len(x) / SOURCE_RATE
        del x

        refrain_command = [str(Path(sys.executable).with_name("refrain"))]
        key = subprocess.run([*refrain_command, "keys", "create", "--role", "uploader", "--principal", "bench",
                              "--index", str(index)], capture_output=True, text=True, check=True).stdout.strip()
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        environment = {**os.environ, "REFRAIN_MAX_UPLOAD_SECONDS": str(max(1200.0, seconds + 60.0)),
                       "REFRAIN_ANALYSIS_BUDGET_SECONDS": str(max(2400.0, 2 * seconds + 120.0))}
        server = subprocess.Popen([*refrain_command, "serve", "--index", str(index), "--port", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment)
        try:
            _wait_for(url, server)
            deadline = time.monotonic() + 300
            while httpx.get(url + "/v1/health/ready", timeout=5).status_code != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("refrain serve did not get ready in time")
                time.sleep(0.5)
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=900) as client:
                post(client, short).raise_for_status()
                idle = status_mb("VmRSS", server.pid)
                Path(f"/proc/{server.pid}/clear_refs").write_text("5")  # VmHWM from here on
                cpu_before, started = proc_cpu_seconds(server.pid), time.perf_counter()
                answer = post(client, upload)
                wall = time.perf_counter() - started
                cpu = proc_cpu_seconds(server.pid) - cpu_before
                answer.raise_for_status()
            peak = status_mb("VmHWM", server.pid)
        finally:
            _stop([server])
    decision = answer.json()
    found = {w["track_id"]: w["kind"] for w in decision["works"]}
    report = {"upload_minutes": round(seconds / 60, 2), "idle_rss_MB": round(idle), "peak_rss_MB": round(peak),
              "peak_above_idle_MB": round(peak - idle), "request_cpu_seconds": round(cpu, 2),
              "request_wall_seconds": round(wall, 2), "x_realtime_per_core": round(seconds / cpu, 1),
              "verdict": decision["verdict"], "works_laid_in": len(laid_in),
              "works_found": sum(track in laid_in for track in found),
              "found_time_stretched": sum(track in laid_in and kind == "time_stretched"
                                          for track, kind in found.items()),
              "other_works_reported": sum(track not in laid_in for track in found)}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
