"""The batch runner shared by every rescan: items in, one JSON record per item out, in parallel and resumable.

A rescan is a list of item keys (track ids, decision ids) and a :class:`JobSpec`
that knows how to open what the items need (the index, memory-mapped; the service
database) and how to process one item into a JSON-able record. The runner:

* runs the items in this process (``jobs=1``), in a local process pool
  (``jobs=N``) or on a Dask cluster (``dask="local"`` or ``"tcp://host:port"``).
  Every worker opens the spec's resources once (:func:`process_item` caches them
  per process and thread) and is sent items in bounded batches;
* appends each finished record to ``OUT/checkpoint.jsonl`` at once, so a killed
  run resumes where it stopped (``resume=True``) and does only the rest;
* turns an item that raises into a ``failed`` record: a bad item never ends the batch;
* returns the records in the order of the keys, whoever computed them and in
  whatever order they finished, so every way of running gives the same output.

``OUT/run.json`` holds what the run was started with (the job, its arguments, the
item keys, a run id and its start time); a resumed run reuses all of it.
"""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import resource
import sys
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from tqdm import tqdm

__all__ = ["RescanOptions", "JobSpec", "RunState", "RunResult", "RunUsageError", "run_items",
           "process_item", "finish", "write_jsonl", "write_csv", "CHECKPOINT", "RUN_FILE"]

CHECKPOINT, RUN_FILE = "checkpoint.jsonl", "run.json"


@dataclass(frozen=True)
class RescanOptions:
    """How a rescan is run (not what it computes: the same options give the same records).

    Attributes
    ----------
    jobs : int
        Worker processes on this machine (default 1: in this process), or Dask workers
        started by ``dask="local"``.
    dask : str or None
        None (default) for local processes; ``"local"`` to start a
        ``distributed.LocalCluster`` of ``jobs`` single-threaded workers; or a
        scheduler address (``tcp://host:8786``) to use a running cluster, whose
        workers must see the same index and database paths.
    dask_processes : bool
        Whether ``dask="local"`` workers are processes (default True, as on a real
        cluster); False runs them as threads of this process (quicker to start).
    in_flight_per_worker : int
        Items submitted ahead per worker (default 4): enough to keep workers busy,
        few enough that a huge rescan is streamed rather than submitted at once.
    progress : bool
        Show a progress bar with rate and ETA on stderr (default True; tqdm hides it
        when stderr is not a terminal).
    """

    jobs: int = 1
    dask: str | None = None
    dask_processes: bool = True
    in_flight_per_worker: int = 4
    progress: bool = True


class JobSpec(Protocol):
    """What a rescan does to one item. Must pickle (it is sent to worker processes)."""

    def open(self) -> Any:
        """Open what items need (once per worker); the result is passed to :meth:`process`."""

    def process(self, context: Any, key: Any) -> dict:
        """The JSON-able record of one item: ``{"status": "ok"|"skipped"|"failed", ...}``."""


class RunUsageError(ValueError):
    """The output folder does not fit the request (an unfinished run without resume, or another job's)."""


@dataclass(frozen=True)
class RunState:
    """What ``OUT/run.json`` keeps: enough to resume the very same run."""

    job: str
    arguments: dict
    keys: list
    run_id: str
    started_at: str

    def started(self) -> datetime:
        return datetime.fromisoformat(self.started_at)


@dataclass
class RunResult:
    """The records in key order, and what the workers used.

    Attributes
    ----------
    state : RunState
    records : list of dict
        One per key, with ``item`` (the key) and ``status``.
    resumed : int
        Records taken from an earlier, interrupted attempt.
    worker_peak_rss : dict of str to int
        Peak resident memory (bytes) of each worker process that ran items in this attempt.
    """

    state: RunState
    records: list[dict]
    resumed: int = 0
    worker_peak_rss: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(record["status"] == "failed" for record in self.records)


# -- the worker side -------------------------------------------------------------------------

#: Opened contexts of this worker process, by (spec, thread): each worker opens the index once.
_CONTEXTS: dict[tuple[Any, int], Any] = {}
_CONTEXTS_LOCK = threading.Lock()


def _peak_rss_bytes() -> int:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def process_item(spec: JobSpec, key) -> tuple[dict, str, int]:
    """Run one item on whatever worker this is: (record, worker id, its peak RSS in bytes).

    The spec's context is opened on the first item a worker gets and kept for the next
    ones. An exception from the item becomes a ``failed`` record.
    """
    cache_key = (spec, threading.get_ident())
    with _CONTEXTS_LOCK:
        context = _CONTEXTS.get(cache_key)
        if context is None:
            context = _CONTEXTS[cache_key] = spec.open()
    try:
        record = spec.process(context, key)
    except Exception as err:  # noqa: BLE001 - one bad item is reported, never the end of the batch
        record = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    worker = f"{os.uname().nodename}:{os.getpid()}"
    return {"item": key, **record}, worker, _peak_rss_bytes()


# -- the driver side -------------------------------------------------------------------------


def _start_state(out: Path, job: str, arguments: dict, keys: list, resume: bool) -> tuple[RunState, dict]:
    """The run's state and the records already done (when resuming)."""
    checkpoint, run_file = out / CHECKPOINT, out / RUN_FILE
    if resume:
        if not run_file.exists() or not checkpoint.exists():
            raise RunUsageError(f"{out}: no interrupted run to resume here")
        state = RunState(**json.loads(run_file.read_text()))
        if state.job != job or state.arguments != arguments:
            raise RunUsageError(f"{out}: the interrupted run was `{state.job}` with {state.arguments}, "
                                f"not `{job}` with {arguments}")
        return state, _read_checkpoint(checkpoint)
    unfinished = len(_read_checkpoint(checkpoint))
    if unfinished:  # a run that did nothing (e.g. its cluster was unreachable) is simply replaced
        raise RunUsageError(f"{out}: holds an unfinished run ({unfinished} items done): add --resume "
                            "to continue it, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)
    state = RunState(job=job, arguments=arguments, keys=list(keys), run_id=uuid.uuid4().hex,
                     started_at=datetime.now(timezone.utc).isoformat(timespec="microseconds"))
    _write_atomic(run_file, json.dumps(state.__dict__, indent=1) + "\n")
    checkpoint.touch()
    return state, {}


def _read_checkpoint(path: Path) -> dict:
    """Records by key (as JSON text, so int and str keys stay apart) from a checkpoint file.

    The last line may be cut short by a kill; it is dropped and its item done again.
    """
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        done[json.dumps(entry["item"])] = entry
    return done


def _run_local(spec: JobSpec, keys: list, options: RescanOptions) -> Iterator[tuple[dict, str, int]]:
    if options.jobs <= 1:
        for key in keys:
            yield process_item(spec, key)
        return
    # forkserver, not fork: the parent may already run FAISS/OpenMP threads, which a fork
    # would copy in an unusable state.
    context = multiprocessing.get_context("forkserver")
    limit = options.jobs * options.in_flight_per_worker
    todo = iter(keys)
    while True:
        with ProcessPoolExecutor(max_workers=options.jobs, mp_context=context) as pool:
            pending: dict = {}
            try:
                while True:
                    for key in todo:
                        pending[pool.submit(process_item, spec, key)] = key
                        if len(pending) >= limit:
                            break
                    if not pending:
                        return
                    finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        outcome = future.result()
                        del pending[future]
                        yield outcome
            except BrokenProcessPool as err:
                # A worker died (killed, out of memory, a crash in native code): the items it may
                # have held fail, the rest go on in a new pool.
                for key in pending.values():
                    yield {"item": key, "status": "failed", "error": f"worker process died ({err})"}, "", 0
            finally:
                for future in pending:
                    future.cancel()


def _run_dask(spec: JobSpec, keys: list, options: RescanOptions) -> Iterator[tuple[dict, str, int]]:
    import logging

    from distributed import Client, LocalCluster, as_completed

    if options.dask == "local":
        cluster = LocalCluster(n_workers=options.jobs, threads_per_worker=1,
                               processes=options.dask_processes, dashboard_address=None,
                               silence_logs=logging.ERROR)
        client = Client(cluster)
    else:
        cluster, client = None, Client(options.dask, timeout="30s")
    try:
        workers = max(1, len(client.scheduler_info()["workers"]))
        todo = iter(keys)
        first = [client.submit(process_item, spec, key, pure=False)
                 for _, key in zip(range(workers * options.in_flight_per_worker), todo)]
        by_future = {future.key: key for future, key in zip(first, keys)}
        stream = as_completed(first)
        for future in stream:
            key = by_future.pop(future.key)
            try:
                yield future.result()
            except Exception as err:  # noqa: BLE001 - a lost worker or unpicklable result: that item fails
                yield {"item": key, "status": "failed", "error": f"{type(err).__name__}: {err}"}, "", 0
            for key in todo:
                more = client.submit(process_item, spec, key, pure=False)
                by_future[more.key] = key
                stream.add(more)
                break
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_items(make_spec: Callable[[RunState], JobSpec], job: str, arguments: dict, keys: Iterable,
              out: os.PathLike, options: RescanOptions = RescanOptions(), resume: bool = False) -> RunResult:
    """Process every item, checkpointing each record, and return the records in key order.

    Parameters
    ----------
    make_spec : callable
        ``make_spec(state)`` -> the :class:`JobSpec` (pickled to the workers); it gets the
        run's state so that, e.g., a verdict time is the run's start, also after a resume.
    job : str
        The job's name (``catalogue``, ``uploads``), checked on resume.
    arguments : dict
        JSON-able arguments that define the run (checked on resume: a run resumes only
        with the arguments it was started with).
    keys : iterable
        JSON-able item keys, in output order. Ignored on resume (the started run's are used).
    out : path-like
        Output folder (holds ``run.json`` and ``checkpoint.jsonl``).
    options : RescanOptions
    resume : bool
        Continue the interrupted run in ``out``.

    Raises
    ------
    RunUsageError
        ``out`` holds an unfinished run and ``resume`` is False, or another job's run.
    """
    out = Path(out)
    state, done = _start_state(out, job, arguments, list(keys), resume)
    todo = [key for key in state.keys if json.dumps(key) not in done]
    result = RunResult(state, [], resumed=len(state.keys) - len(todo))
    spec = make_spec(state)
    runner = _run_dask if options.dask else _run_local
    with open(out / CHECKPOINT, "a", encoding="utf-8") as checkpoint, \
            tqdm(total=len(state.keys), initial=result.resumed, unit="item", file=sys.stderr,
                 disable=None if options.progress else True, dynamic_ncols=True, desc=job) as bar:
        for record, worker, peak_rss in runner(spec, todo, options):
            done[json.dumps(record["item"])] = record
            # One line per item, flushed at once: what a kill leaves is what a resume skips.
            checkpoint.write(json.dumps(record) + "\n")
            checkpoint.flush()
            if worker:
                result.worker_peak_rss[worker] = max(peak_rss, result.worker_peak_rss.get(worker, 0))
            if record["status"] == "failed":
                bar.write(f"error: item {record['item']}: {record.get('error')}", file=sys.stderr)
            bar.update()
    result.records = [done[json.dumps(key)] for key in state.keys]
    return result


def finish(out: os.PathLike) -> None:
    """Mark the run in ``out`` complete: its checkpoint goes, the outputs stay."""
    (Path(out) / CHECKPOINT).unlink(missing_ok=True)


# -- outputs ---------------------------------------------------------------------------------


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8", newline="")
    os.replace(partial, path)


def write_jsonl(path: os.PathLike, rows: Iterable[dict]) -> None:
    """One JSON object per line, written whole or not at all."""
    _write_atomic(Path(path), "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))


def write_csv(path: os.PathLike, header: list[str], rows: Iterable[dict]) -> None:
    """A CSV file with ``header`` columns (missing fields empty), written whole or not at all."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=header, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    _write_atomic(Path(path), text.getvalue())
