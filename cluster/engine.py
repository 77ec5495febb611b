"""The shards on Dask distributed: one long-lived worker process (or several replicas) per shard.

Each shard worker is started with the resource named after its shard (``shard-000=1``);
the router places one actor (:class:`ShardServer`) per shard on a worker with that
resource and calls it directly; the worker keeps the shard memory-mapped between calls
(:func:`refrain.cluster.shard.open_shard`). A query's arguments are pickled once; shards
on the router's machine read them from one file in shared memory (:data:`SHARED_MEMORY`),
the others get them in the call, and every answer is awaited on the client's event loop
at once. A worker that dies is restarted by its
nanny and answers again as soon as it is back; a call that has not finished by its
deadline is cancelled and raises :class:`ShardUnavailableError`. See docs/cluster.md
for why Dask and not Ray.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import CancelledError
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from distributed import Client, get_worker
from distributed.scheduler import KilledWorker

from refrain.cluster.layout import SCHEDULER_FILE, Shard
from refrain.cluster.shard import open_count_table, open_shard, shard_match

log = logging.getLogger("refrain.cluster")

__all__ = ["ShardUnavailableError", "ShardEngine", "ShardServer", "LocalCluster"]

#: How often the router looks for new or restarted replicas of its shards (seconds).
REPLICA_CHECK_SECONDS = 5.0
#: Where the router leaves a query's arguments for the shard processes of its own machine: memory, not disk.
SHARED_MEMORY = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())


#: A query file's name starts with this and the router's process id, so that a later router can tell a dead one's files.
SHARED_PREFIX = "refrain-query-"


@contextmanager
def _shared_file(data: bytes) -> Iterator[Path]:
    """``data`` in a file of :data:`SHARED_MEMORY` for the ``with`` block (then removed)."""
    with tempfile.NamedTemporaryFile(dir=SHARED_MEMORY, prefix=f"{SHARED_PREFIX}{os.getpid()}-",
                                     delete=False) as handle:
        handle.write(data)
    try:
        yield Path(handle.name)
    finally:
        os.unlink(handle.name)


def remove_orphaned_query_files(directory: Path = SHARED_MEMORY) -> int:
    """Remove the query files routers that are no longer running left in ``directory``; returns how many.

    A router killed inside a query (``SIGKILL``, out of memory) cannot unlink its file, and
    ``/dev/shm`` is memory until the machine restarts, so each router clears its dead
    predecessors' files when it starts.
    """
    removed = 0
    for path in directory.glob(f"{SHARED_PREFIX}*-*"):
        owner = path.name[len(SHARED_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or _running(int(owner)):
            continue
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:  # another starting router removed it first
            pass
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


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


class ShardServer:
    """The Dask actor of one shard: lives in a shard worker and answers the router's calls directly.

    Calls to an actor go from the router to the worker without the scheduler: a quarter
    of a task's overhead on this machine (docs/cluster.md).
    """

    def __init__(self, directory: str, shard_id: int, counts_path: str):
        self.directory, self.shard_id, self.counts_path = directory, shard_id, counts_path
        self.worker = get_worker().name  # the replica's name, in every answer
        open_shard(directory)  # mapped now: the first query does not wait for it
        open_count_table(counts_path)

    def match(self, fp, name, params):
        answer = shard_match(self.directory, self.shard_id, self.counts_path, fp, name, params)
        answer.served_by = str(self.worker)
        return answer

    def call(self, method: str, arguments: bytes):
        """``self.<method>(*arguments)``, the arguments pickled once by the router for every shard."""
        return getattr(self, method)(*pickle.loads(arguments))

    def call_from_file(self, method: str, path: str):
        """:meth:`call` with the arguments the router left in a file of this machine's shared memory."""
        return self.call(method, Path(path).read_bytes())

    def placed(self, path: str, token: bytes) -> tuple[str, bool]:
        """The address of this actor's worker, and whether it reads the router's file ``path`` as ``token`` (whether it
        shares the router's shared-memory files)."""
        try:
            beside = Path(path).read_bytes() == token
        except OSError:
            beside = False
        return get_worker().address, beside


@dataclass
class _Replica:
    """One actor serving a shard, where it runs, and whether it reads the router's shared-memory files."""

    actor: Any
    address: str | None = None
    beside: bool = False


class ShardEngine:
    """Calls to the shards of a cluster through its Dask scheduler: one actor per shard replica.

    Every worker holding a shard's resource (``shard-NNN=1``) is a replica of that shard: an
    actor is placed on each, and the router spreads its calls over them in turn (load
    balancing), looking for new or restarted replicas every ``REPLICA_CHECK_SECONDS``. A call
    that fails because its worker died drops that replica and goes to another within the
    same deadline; a shard left with none has its actor placed again at the next call (on the
    restarted worker).

    Parameters
    ----------
    scheduler_file : path-like
        The scheduler's address file (``DIR/scheduler.json``).
    counts_path : path-like
        The cluster's count table (``DIR/counts.npz``), which every shard maps.
    deadline_seconds : float
        Longest wait for every shard's answer to one call.
    """

    def __init__(self, scheduler_file: os.PathLike, counts_path: os.PathLike, deadline_seconds: float):
        self.deadline_seconds = deadline_seconds
        self.counts_path = str(counts_path)
        if removed := remove_orphaned_query_files():
            log.info("removed %d query files left in %s by routers that died mid-query", removed, SHARED_MEMORY)
        try:
            self.client = Client(scheduler_file=str(scheduler_file), timeout=deadline_seconds,
                                 set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise ShardUnavailableError([], deadline_seconds, f"(no scheduler at {scheduler_file}: {err})") from err
        self._replicas: dict[int, list[_Replica]] = {}
        self._turns: dict[int, int] = {}
        self._checked_at = -REPLICA_CHECK_SECONDS
        self._placing = threading.Lock()

    def close(self) -> None:
        self.client.close()

    def _holders(self) -> dict[str, list[str]]:
        """Resource name -> the addresses of the workers that hold it."""
        holders: dict[str, list[str]] = {}
        for address, info in self.client.scheduler_info()["workers"].items():
            for resource in info.get("resources", {}):
                holders.setdefault(resource, []).append(address)
        return holders

    def _place(self, shards: Sequence[Shard], deadline: float, allowed: float) -> None:
        """An actor on every replica of each shard; raises for a shard none of whose replicas could be placed."""
        with self._placing:
            unserved = [s for s in shards if not self._replicas.get(s.shard_id)]
            if not unserved and time.monotonic() - self._checked_at < REPLICA_CHECK_SECONDS:
                return
            self._checked_at = time.monotonic()
            holders = self._holders()
            wanted: list[tuple[Shard, str | None]] = []
            for shard in shards:
                serving = {replica.address for replica in self._replicas.get(shard.shard_id, [])}
                new = [address for address in holders.get(shard.resource, []) if address not in serving]
                # No worker holds the resource yet (its worker restarting): placed once one does, by the deadline.
                wanted += [(shard, address) for address in new] or ([(shard, None)] if not serving else [])
            if not wanted:
                return
            # Inside the client's context, so that the actor handles bind to this client.
            with self.client.as_current():
                futures = [self.client.submit(ShardServer, shard.directory, shard.shard_id, self.counts_path,
                                              actor=True, pure=False, resources={shard.resource: 1},
                                              workers=None if address is None else [address],
                                              allow_other_workers=False)
                           for shard, address in wanted]
                placed: list[tuple[Shard, Any]] = []
                for (shard, _), future in zip(wanted, futures):
                    try:
                        placed.append((shard, future.result(timeout=max(0.0, deadline - time.monotonic()))))
                    except (TimeoutError, KilledWorker, CancelledError, OSError):
                        self.client.cancel([future])
            token = secrets.token_bytes(16)
            with _shared_file(token) as path:
                calls = {number: actor.placed(str(path), token) for number, (_, actor) in enumerate(placed)}
                outcomes = self.client.sync(_outcomes, calls, max(0.0, deadline - time.monotonic()))
            for number, (shard, actor) in enumerate(placed):
                outcome = outcomes[number]
                if isinstance(outcome, tuple):
                    self._replicas.setdefault(shard.shard_id, []).append(_Replica(actor, *outcome))
            late = [s.shard_id for s in unserved if not self._replicas.get(s.shard_id)]
            if late:
                raise ShardUnavailableError(late, allowed)

    def _next_replica(self, shard_id: int) -> _Replica:
        """The shard's replicas in turn."""
        replicas = self._replicas[shard_id]
        turn = self._turns.get(shard_id, 0)
        self._turns[shard_id] = turn + 1
        return replicas[turn % len(replicas)]

    def _lost(self, shard_id: int, replica: _Replica, err: BaseException) -> None:
        replicas = self._replicas.get(shard_id, [])
        if replica in replicas:
            replicas.remove(replica)
        log.warning("shard %s, replica %s: %s: %s; %s", shard_id, replica.address, type(err).__name__, err,
                    f"{len(replicas)} replicas left" if replicas else "placed again at the next call")

    def each(self, shards: Sequence[Shard], method: str, *args: Any,
             deadline_seconds: float | None = None) -> list[Any]:
        """``ShardServer.<method>(*args)`` on every shard at once (on one of its replicas); the answers in shard order.

        ``deadline_seconds``: this call's deadline (default the engine's).

        Raises
        ------
        ShardUnavailableError
            If a shard has not answered within the deadline, or its last replica died.
        """
        allowed = self.deadline_seconds if deadline_seconds is None else deadline_seconds
        deadline = time.monotonic() + allowed
        self._place(shards, deadline, allowed)
        lost = (OSError, CancelledError, KilledWorker, RuntimeError)
        # Pickled once for every shard (a 10 s query's arguments are 200-300 kB, most of it the
        # fingerprint), and written once to shared memory for the shards on this machine: sent to
        # each over its socket, they cost the round trip ~1.5 ms per shard on 2 cores (docs/cluster.md).
        arguments = pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)
        answers: dict[int, Any] = {}
        unavailable: list[int] = []
        todo = [shard.shard_id for shard in shards]
        with _shared_file(arguments) if any(r.beside for s in todo for r in self._replicas.get(s, [])) \
                else nullcontext() as path:
            while todo:
                calls, chosen = {}, {}
                for shard_id in todo:
                    if not self._replicas.get(shard_id):
                        unavailable.append(shard_id)
                        continue
                    replica = chosen[shard_id] = self._next_replica(shard_id)
                    try:
                        calls[shard_id] = (replica.actor.call_from_file(method, str(path)) if replica.beside
                                           else replica.actor.call(method, arguments))
                    except lost as err:  # the handle knows already: "Worker holding Actor was lost"
                        self._lost(shard_id, replica, err)
                todo = [shard_id for shard_id in todo if shard_id not in calls and shard_id not in unavailable]
                outcomes = self.client.sync(_outcomes, calls, max(0.0, deadline - time.monotonic())) if calls else {}
                for shard_id, outcome in outcomes.items():
                    if isinstance(outcome, TimeoutError):
                        unavailable.append(shard_id)  # slow, perhaps not dead: its replica is kept
                    elif isinstance(outcome, lost):  # its worker died during the call: another replica, if any
                        self._lost(shard_id, chosen[shard_id], outcome)
                        todo.append(shard_id)
                    elif isinstance(outcome, BaseException):
                        raise outcome
                    else:
                        answers[shard_id] = outcome
                if time.monotonic() >= deadline:
                    unavailable += todo
                    break
        if unavailable:
            raise ShardUnavailableError(sorted(set(unavailable)), allowed)
        return [answers[shard.shard_id] for shard in shards]


async def _outcomes(calls: dict[int, Any], timeout: float) -> dict[int, Any]:
    """Each call's answer, or the exception it raised, or a ``TimeoutError`` if it is not back by ``timeout``.

    Awaited on the client's event loop all at once: one hand-off from the caller's thread to
    the loop and back per query, not one per shard.
    """
    async def answer(call):
        return await call

    tasks = {shard_id: asyncio.ensure_future(answer(call)) for shard_id, call in calls.items()}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=timeout)
    outcomes: dict[int, Any] = {}
    for shard_id, task in tasks.items():
        if not task.done():
            task.cancel()
            outcomes[shard_id] = TimeoutError()
        else:
            outcomes[shard_id] = task.exception() or task.result()
    return outcomes


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
    environment : mapping of str to str, optional
        Variables set for the shard workers beside this process's (e.g. their thread pools).
    """

    def __init__(self, directory: os.PathLike, shards: Sequence[Shard], replicas: int = 1,
                 environment: Mapping[str, str] | None = None):
        self.environment = {**os.environ, **(environment or {})}
        self.directory = Path(directory)
        self.scheduler_file = self.directory / SCHEDULER_FILE
        self.scheduler_file.unlink(missing_ok=True)
        self.replicas = replicas
        self.scheduler = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                           "127.0.0.1", "--port", "0", "--dashboard-address", ":0", "--no-show",
                                           "--scheduler-file", str(self.scheduler_file)],
                                          start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
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
                             start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=self.environment)
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
