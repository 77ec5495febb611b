"""The shards on Dask distributed: one long-lived worker process (or several replicas) per shard.

Each shard worker is started with the resource named after its shard (``shard-000=1``);
a call for a shard is a task that asks for that resource, so it runs only in that
shard's processes, which keep the shard memory-mapped between calls
(:func:`refrain.cluster.shard.open_shard`). A worker that dies is restarted by its
nanny and answers again as soon as it is back; a call that has not finished by its
deadline is cancelled and raises :class:`ShardUnavailableError`. See docs/cluster.md
for why Dask and not Ray.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any, Callable, Sequence

from distributed import Client
from distributed.scheduler import KilledWorker

from refrain.cluster.layout import SCHEDULER_FILE, Shard

__all__ = ["ShardUnavailableError", "ShardEngine", "LocalCluster"]


class ShardUnavailableError(RuntimeError):
    """A shard did not answer within its deadline (or its process died): no answer from part of the catalogue.

    Attributes
    ----------
    shards : list of int
        The shards that did not answer.
    """

    def __init__(self, shards: Sequence[int], deadline: float, reason: str = "did not answer"):
        self.shards = list(shards)
        names = ", ".join(f"shard {s}" for s in self.shards)
        super().__init__(f"{names} {reason} within {deadline:g} s: the catalogue cannot be searched whole")


class ShardEngine:
    """Calls to the shards of a cluster through its Dask scheduler.

    Parameters
    ----------
    scheduler_file : path-like
        The scheduler's address file (``DIR/scheduler.json``).
    deadline_seconds : float
        Longest wait for every shard's answer to one call.
    """

    def __init__(self, scheduler_file: os.PathLike, deadline_seconds: float):
        self.deadline_seconds = deadline_seconds
        try:
            self.client = Client(scheduler_file=str(scheduler_file), timeout=deadline_seconds,
                                 set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise ShardUnavailableError([], deadline_seconds, f"(no scheduler at {scheduler_file}: {err})") from err

    def close(self) -> None:
        self.client.close()

    def each(self, shards: Sequence[Shard], function: Callable[..., Any], *args: Any,
             per_shard: Sequence[tuple] | None = None, deadline_seconds: float | None = None) -> list[Any]:
        """``function(shard.directory, *args)`` on every shard at once, in shard order.

        ``per_shard``: arguments after ``args`` that differ by shard (one tuple each).
        ``deadline_seconds``: this call's deadline (default the engine's).

        Raises
        ------
        ShardUnavailableError
            If a shard has not answered within the deadline or its process died; the
            calls still running are cancelled.
        """
        extra = per_shard or [()] * len(shards)
        futures = [self.client.submit(function, shard.directory, *args, *more, resources={shard.resource: 1},
                                      pure=False)
                   for shard, more in zip(shards, extra)]
        allowed = self.deadline_seconds if deadline_seconds is None else deadline_seconds
        remaining = threading.Semaphore(0)
        for future in futures:
            future.add_done_callback(lambda _: remaining.release())
        deadline = time.monotonic() + allowed
        for _ in futures:
            if not remaining.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        unavailable = [shard.shard_id for shard, future in zip(shards, futures) if future.status != "finished"]
        if unavailable:
            errors = [future.exception() for future in futures if future.status == "error"]
            self.client.cancel(futures)
            # A shard's own failure (not a lost process) is a bug to report as it is.
            for error in errors:
                if not isinstance(error, (KilledWorker, CancelledError, OSError, TimeoutError)):
                    raise error
            raise ShardUnavailableError(unavailable, allowed)
        return self.client.gather(futures)


_QUIET = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}


class LocalCluster:
    """A scheduler and one worker process per shard on this machine (``refrain cluster up``).

    Plain ``dask scheduler`` / ``dask worker`` commands, each worker under its nanny (which
    restarts it if it dies): the same processes an operator starts on many machines.

    Parameters
    ----------
    directory : path-like
        The cluster directory; the scheduler writes its address to ``DIR/scheduler.json``.
    shards : sequence of Shard
    replicas : int
        Worker processes per shard (each serves the shard's calls; default 1).
    """

    def __init__(self, directory: os.PathLike, shards: Sequence[Shard], replicas: int = 1):
        self.directory = Path(directory)
        self.scheduler_file = self.directory / SCHEDULER_FILE
        self.scheduler_file.unlink(missing_ok=True)
        self.replicas = replicas
        self.scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                           "127.0.0.1", "--port", "0", "--dashboard-address", ":0", "--no-show",
                                           "--scheduler-file", str(self.scheduler_file)],
                                          start_new_session=True, **_QUIET)
        self.shards = {shard.shard_id: shard for shard in shards}
        self.workers: dict[int, list[subprocess.Popen]] = {}
        for shard in shards:
            self.start_shard(shard.shard_id)

    def start_shard(self, shard_id: int) -> None:
        """Start the shard's worker processes (each under its nanny, which restarts it if it dies)."""
        resource = self.shards[shard_id].resource
        self.workers[shard_id] = [
            subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                              str(self.scheduler_file), "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                              "--name", f"{resource}-{replica}", "--resources", f"{resource}=1",
                              "--memory-limit", "0", "--dashboard-address", ":0"],
                             start_new_session=True, **_QUIET)
            for replica in range(self.replicas)]

    def kill_shard(self, shard_id: int) -> None:
        """Kill the shard's processes at once (SIGKILL, nannies included): a machine lost."""
        for process in self.workers.pop(shard_id, []):
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until every shard worker has joined the scheduler."""
        deadline = time.monotonic() + timeout
        while not self.scheduler_file.exists():
            if time.monotonic() > deadline or self.scheduler.poll() is not None:
                raise RuntimeError("the Dask scheduler did not start")
            time.sleep(0.1)
        wanted = sum(len(w) for w in self.workers.values())
        with Client(scheduler_file=str(self.scheduler_file), timeout=timeout, set_as_default=False) as client:
            client.wait_for_workers(wanted, timeout=max(1.0, deadline - time.monotonic()))

    def processes(self) -> list[subprocess.Popen]:
        return [self.scheduler] + [p for workers in self.workers.values() for p in workers]

    def stop(self) -> None:
        """Stop every process (each worker's nanny takes its worker with it)."""
        for process in reversed(self.processes()):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.scheduler_file.unlink(missing_ok=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
