"""The ``refrain`` command line: build a catalogue index and match uploads against it.

A thin shell over :class:`refrain.api.Refrain`: argument parsing, progress and
output formatting only. Every fingerprinting, indexing and matching decision is
the library's, so the CLI, the HTTP service and library users all behave alike.

Commands
--------
``refrain ingest --index DIR [--jobs N] [--progress-interval S] [--title T --artist A --isrc I] PATH...``
    Add files or folders (recursively) to the index, creating it if missing. Progress
    counts audio seconds: a bar on a terminal, else a log line every ``S`` seconds.
``refrain match --index DIR [--json] PATH...``
    Match query files or folders; ``--json`` prints one JSON object per query.
``refrain remove --index DIR TRACK_ID``
    Take a track out of the index.
``refrain tracks list --index DIR [--json]`` / ``refrain tracks show --index DIR [--json] TRACK_ID``
    The index's tracks (ids for ``remove``), or one track's catalogue record.
``refrain info --index DIR [--json]``
    Tracks, hours, landmarks and bytes of an index.
``refrain demo [--index DIR]``
    Index ``sample_audio/catalogue/`` and match ``sample_audio/queries/``.
``refrain serve (--index DIR | --cluster DIR) [--workers N] [--host H] [--port P] [--db PATH]``
    Run the HTTP match service (``docs/service.md``) on the index or the cluster, in N processes
    sharing the port (``docs/cluster.md``).
``refrain keys create --role ROLE --principal NAME (--index DIR | --db PATH) [--label TEXT]``
    Make an API key for the service, acting for a principal; the key is printed once.
``refrain keys list|revoke PREFIX (--index DIR | --db PATH)``
    List the service's API keys; revoke one (never the last live admin key).
``refrain rescan catalogue --index DIR --out DIR [--resume] [--jobs N] [--dask local|ADDRESS]``
    Match every catalogue track against the index; groups of related works (:mod:`rescan`).
``refrain rescan uploads --index DIR [--db PATH] [--since ISO] [--apply] --out DIR [--resume] [--jobs N] …``
    Re-decide stored upload decisions; report (and apply) the verdicts that change.
``refrain cluster up --cluster DIR [--shards N] [--replicas R]`` / ``add-shard`` / ``rebalance``
    A catalogue partitioned into shards on Dask (``docs/cluster.md``): start a local cluster, add an
    empty shard, move tracks between shards. ``ingest``, ``match``, ``remove``, ``tracks``, ``info``,
    ``serve`` and ``rescan`` take ``--cluster DIR`` in place of ``--index DIR``.

Exit codes
----------
0
    Success: every file was ingested (or already was) / every query was processed.
1
    A file, query or track id failed, or a folder held no audio file; the other
    files and queries were still processed.
2
    Usage error (bad arguments).
3
    The index cannot be opened: missing, not an index, or locked by another writer
    (``serve``, ``keys``: or the service database cannot be opened).
4
    ``serve``: the address cannot be listened on (the port is in use); checked before
    the index is opened.
130
    Interrupted (Ctrl-C); work finished so far is saved.

Examples
--------
::

    refrain ingest --index catalogue-index --jobs 4 music/
    refrain match --index catalogue-index --json uploads/ > matches.jsonl
    refrain remove --index catalogue-index 42
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

from tqdm import tqdm

from refrain.fingerprint import AudioDecodeError, FingerprintError
from refrain.index import IndexOpenError, TrackMetadata
from refrain import __version__
from refrain.api import QueryResult, Refrain, audio_files
from refrain.config import Config
from refrain.tuning import tune_process

__all__ = ["main", "build_parser"]

EXIT_OK, EXIT_FAILED, EXIT_INDEX, EXIT_PORT, EXIT_INTERRUPTED = 0, 1, 3, 4, 130  # argparse exits 2 itself

SAMPLE_AUDIO = Path(__file__).resolve().parents[1] / "sample_audio"

EPILOG = """\
exit codes:
  0    success: every file ingested (or already there), every query processed
  1    some file, query, track id or rescan item failed, or a folder held no audio file
       (the other files, queries and items were still processed)
  2    usage error
  3    the index cannot be opened (missing, not an index, locked by another writer),
       or the service database or the Dask scheduler cannot be opened
  4    serve: the address cannot be listened on (port in use), found before the warm-up
  130  interrupted; work finished so far is saved (a rescan continues with --resume)
"""


class CliError(Exception):
    """A failure to report as one ``error:`` line, with the exit code to return."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def _error(message) -> None:
    # One line per error, even for multi-line library messages (FAISS errors are).
    print("error: " + " ".join(str(message).split("\n")), file=sys.stderr, flush=True)


def _with_path(path: str, message: str) -> str:
    # Decode errors name their file already; FingerprintError messages do not.
    return message if message.startswith(path) else f"{path}: {message}"


def _open_index(directory: Path, **options) -> Refrain:
    try:
        return Refrain.open(directory, **options)
    except IndexOpenError as err:
        raise CliError(str(err), EXIT_INDEX) from err
    except OSError as err:  # e.g. no permission to create or lock the directory
        raise CliError(f"{directory}: cannot open the index ({err})", EXIT_INDEX) from err


def _open_catalogue(args, config: Config | None = None, writable: bool = False, **options):
    """The index of ``--index`` (opened with ``options``), or the router of the cluster of ``--cluster``."""
    if getattr(args, "cluster", None) is None:
        return _open_index(args.index, config=config, writable=writable, **options)
    from refrain.cluster import ClusterRefrain, ShardUnavailableError
    try:
        return ClusterRefrain.open(args.cluster, config=config, writable=writable)
    except ShardUnavailableError as err:
        raise CliError(str(err), EXIT_INDEX) from err


def _catalogue_name(args) -> Path:
    return args.index if getattr(args, "cluster", None) is None else args.cluster


def _expand(paths: list[str]) -> tuple[list[tuple[str, Path]], bool]:
    """(name as given or found, path) of every input file, and whether a folder was empty."""
    found, empty_folder = [], False
    for arg in paths:
        if Path(arg).is_dir():
            files = audio_files([arg])
            if not files:
                _error(f"{arg}: no audio files in this folder")
                empty_folder = True
            found.extend((str(path), path) for path in files)
        else:
            found.append((arg, Path(arg)))
    return found, empty_folder


# -- commands ------------------------------------------------------------------------------


class _Progress:
    """Ingest progress in seconds of audio: a bar on a terminal, else a log line every ``interval`` seconds.

    Without a terminal (CI, nohup, a service manager) a bar would be invisible or
    garbled, so progress is written as plain ``progress:`` lines on stderr.
    """

    def __init__(self, n_files: int, interval: float):
        self.n_files, self.interval = n_files, interval
        self.files = self.errors = 0
        self.audio_seconds = 0.0
        self.started = self.last_line = time.monotonic()
        self.bar = (tqdm(unit=" s audio", unit_scale=True, file=sys.stderr, dynamic_ncols=True)
                    if sys.stderr.isatty() else None)

    def error(self, message: str) -> None:
        self.errors += 1
        if self.bar is not None:
            self.bar.write("error: " + message, file=sys.stderr)
        else:
            _error(message)

    def update(self, audio_seconds: float) -> None:
        self.files += 1
        self.audio_seconds += audio_seconds
        if self.bar is not None:
            self.bar.update(audio_seconds)
            self.bar.set_postfix_str(f"{self.files}/{self.n_files} files", refresh=False)
        elif time.monotonic() - self.last_line >= self.interval:
            self._line()

    def _line(self) -> None:
        self.last_line = time.monotonic()
        elapsed = max(self.last_line - self.started, 1e-9)
        print(f"progress: {self.files}/{self.n_files} files, {self.audio_seconds:,.1f} s of audio "
              f"({self.audio_seconds / elapsed:,.1f} s of audio per second), {self.errors} errors, "
              f"{elapsed:,.0f} s elapsed", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.files:
            self._line()


def _ingest_all(refrain: Refrain, files: list[Path], jobs: int = 1,
                metadata: TrackMetadata = TrackMetadata(), progress_interval: float = 30.0) -> Counter:
    counts: Counter = Counter()
    seconds = landmarks = 0
    results = refrain.ingest(files, jobs=jobs, metadata=metadata)
    progress = _Progress(len(files), progress_interval)
    try:
        # closing(): if interrupted between two results, the generator still commits.
        with closing(results):
            for result in results:
                counts[result.status] += 1
                if result.status == "error":
                    progress.error(_with_path(result.path, result.error))
                elif result.status in ("added", "updated"):
                    seconds += result.duration
                    landmarks += result.n_landmarks
                progress.update(result.duration or 0.0)
    finally:
        progress.close()
        # Printed after Ctrl-C too: the files finished so far are saved, and how many matters.
        info = refrain.info()
        print(f"{counts['added']} added, {counts['updated']} updated, "
              f"{counts['unchanged'] + counts['duplicate']} unchanged, {counts['error']} errors; "
              f"ingested {seconds / 3600:.3f} h, {landmarks:,} landmarks; "
              f"index now {info.tracks} tracks, {info.hours:.3f} h, {info.landmarks:,} landmarks",
              flush=True)
    return counts


def cmd_ingest(args) -> int:
    queries, empty_folder = _expand(args.paths)
    files = [path for _, path in queries]
    metadata = TrackMetadata(args.title, args.artist, args.isrc)
    if metadata != TrackMetadata() and len(files) != 1:
        args.parser.error("--title/--artist/--isrc describe one recording: give exactly one file")
    with _open_catalogue(args, writable=True, create=True) as refrain:
        counts = _ingest_all(refrain, files, args.jobs, metadata, args.progress_interval)
    return EXIT_FAILED if counts["error"] or empty_folder else EXIT_OK


def _print_result(result: QueryResult) -> None:
    print(f"{result.query}  ({result.duration:.1f} s)")
    if not result.matches:
        print("  no match")
    for m in result.matches:
        described = ", ".join(f"{key} {value}" for key, value in
                              (("title", m.title), ("artist", m.artist), ("ISRC", m.isrc)) if value)
        print(f"  track {m.track_id}  {m.source}" + (f"  ({described})" if described else ""))
        # A cover's score is a similarity in 0-1 (threshold 0.57), the others' a weighted count.
        digits = 2 if m.kind == "cover" else 1
        print(f"    {m.kind}  {m.tier} score {m.score:.{digits}f} ({m.aligned} aligned)  "
              f"chance if unrelated {m.chance:.0e}  tempo ×{m.time_ratio:.3f}  pitch {m.pitch_shift_semitones:+.2f} st")
        for span in m.spans:
            print(f"    query {span.query_start:.1f}–{span.query_end:.1f} s ↔ "
                  f"ref {span.ref_start:.1f}–{span.ref_end:.1f} s  (score {span.score:.{digits}f})")


def _match_all(refrain: Refrain, queries: list[tuple[str, Path]], as_json: bool) -> bool:
    """Match and print every query; True if all of them could be processed."""
    ok = True
    for name, path in queries:
        try:
            result = refrain.match_file(path, name=name)
        except (AudioDecodeError, FingerprintError, OSError) as err:
            ok = False
            message = _with_path(str(path), str(err))
            _error(message)
            if as_json:
                print(json.dumps({"query": name, "error": message}), flush=True)
            continue
        if as_json:
            print(json.dumps(result.to_dict()), flush=True)
        else:
            _print_result(result)
    return ok


def cmd_match(args) -> int:
    queries, empty_folder = _expand(args.paths)
    config = Config().searching_covers(args.covers)
    with _open_catalogue(args, config=config, mmap=True) as refrain:
        ok = _match_all(refrain, queries, args.json)
    return EXIT_OK if ok and not empty_folder else EXIT_FAILED


def cmd_remove(args) -> int:
    with _open_catalogue(args, writable=True) as refrain:
        try:
            track = refrain.remove(args.track_id)
        except KeyError:
            raise CliError(f"no track with id {args.track_id} in {_catalogue_name(args)}") from None
    print(f"removed track {track.track_id}: {track.source}")
    return EXIT_OK


def cmd_tracks_list(args) -> int:
    with _open_catalogue(args, mmap=True) as refrain:
        tracks = refrain.tracks()
    if args.json:
        for track in tracks:
            print(json.dumps(dataclasses.asdict(track)))
        return EXIT_OK
    for track in tracks:
        described = " — ".join(value for value in (track.title, track.artist) if value)
        print(f"{track.track_id:>7}  {track.duration:8.1f} s  {track.source}"
              + (f"  ({described})" if described else ""))
    print(f"{len(tracks)} tracks", file=sys.stderr)
    return EXIT_OK


def cmd_tracks_show(args) -> int:
    with _open_catalogue(args, mmap=True) as refrain:
        track = refrain.track(args.track_id)
    if track is None:
        raise CliError(f"no track with id {args.track_id} in {_catalogue_name(args)}")
    record = dataclasses.asdict(track)
    if args.json:
        print(json.dumps(record))
    else:
        for name, value in record.items():
            print(f"{name:<12} {'' if value is None else value}")
    return EXIT_OK


def cmd_upgrade(args) -> int:
    with _open_index(args.index, writable=True) as refrain:
        upgraded = refrain.upgrade_index()
    print(f"upgraded the {' and '.join(upgraded)} tier{'s' if len(upgraded) > 1 else ''} of {args.index}"
          if upgraded else f"{args.index} is already current: nothing to do")
    return EXIT_OK


def cmd_info(args) -> int:
    with _open_catalogue(args, mmap=True) as refrain:
        info = refrain.info()
    if args.json:
        print(json.dumps(info.to_dict()))
        return EXIT_OK
    print(f"index      {info.directory}\ntracks     {info.tracks}\nhours      {info.hours:.3f}\n"
          f"landmarks  {info.landmarks:,}\nbytes      {info.bytes:,}")
    print(f"melody     {info.melody_segments:,} segments" if info.melody_segments is not None else
          "melody     absent (index built before the melody tier: covers are not searched; "
          "re-ingest into a new index)")
    if not info.proposals:
        print("proposals  absent (index built before them: every query searches every track, a cost that grows "
              "with the catalogue; re-ingest into a new index)")
    if info.upgradable:
        print(f"layout     from an earlier Refrain ({', '.join(info.upgradable)}): read as it is (larger files, "
              f"slower lookups; tiers in FAISS files converted in memory at every open) until "
              f"`refrain upgrade --index {args.index}`")
    for name, size in sorted(info.files.items()):
        print(f"  {name:<24} {size:>14,}")
    return EXIT_OK


def cmd_demo(args) -> int:
    catalogue, queries = SAMPLE_AUDIO / "catalogue", SAMPLE_AUDIO / "queries"
    if not catalogue.is_dir() or not queries.is_dir():
        raise CliError(f"{SAMPLE_AUDIO}: sample audio not found (the demo needs a source checkout)")
    if args.index is not None:
        return _demo(args.index, catalogue, queries)
    with tempfile.TemporaryDirectory(prefix="refrain-demo-") as tmp:
        return _demo(Path(tmp) / "index", catalogue, queries)


def _demo(index: Path, catalogue: Path, queries: Path) -> int:
    print(f"Indexing {catalogue} into {index}")
    with _open_index(index, create=True) as refrain:
        counts = _ingest_all(refrain, audio_files([catalogue]))
        print(f"\nMatching {queries}")
        named = [(str(path.relative_to(SAMPLE_AUDIO)), path) for path in audio_files([queries])]
        ok = _match_all(refrain, named, as_json=False)
    return EXIT_OK if ok and not counts["error"] else EXIT_FAILED


def _service_settings(args):
    """ServiceSettings from the command line, the rest from ``REFRAIN_*`` env vars and defaults."""
    from pydantic import ValidationError

    from refrain.service.settings import ServiceSettings

    cluster = getattr(args, "cluster", None)
    given = {name: value for name, value in (("index_dir", cluster or getattr(args, "index", None)),
                                             ("cluster", True if cluster else None),
                                             ("db_path", getattr(args, "db", None)),
                                             ("host", getattr(args, "host", None)),
                                             ("port", getattr(args, "port", None)))
             if value is not None}
    try:
        return ServiceSettings(**given)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}"
                             for e in err.errors())
        raise CliError(f"invalid service settings ({problems})", 2) from None


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), handed to uvicorn; a busy port is one error line and exit code 4."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise CliError(f"{host}:{port} is already in use by another process: stop it or serve on another "
                           f"--port", EXIT_PORT) from None
        raise CliError(f"cannot listen on {host}:{port} ({err.strerror or err})", EXIT_PORT) from None
    return sock


#: Set by ``refrain serve --workers N`` for each worker process it starts: the inherited
#: descriptor of the socket the supervisor listens on (an internal handoff, not a setting).
_WORKER_SOCKET_FD = "REFRAIN_SERVE_SOCKET_FD"
#: The thread pools each worker is limited to (BLAS, OpenMP, numba): set before the worker's
#: interpreter loads them, so N workers on N cores do not each start one thread per core.
_THREAD_POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
#: A worker that exits this soon after its start is not restarted: the service stops.
_WORKER_CRASH_SECONDS = 10.0
#: How long a stopping worker may finish its requests before it is killed.
_WORKER_STOP_SECONDS = 30.0


def cmd_serve(args) -> int:
    import uvicorn

    from refrain.service.app import create_app
    from refrain.service.limits import header_timeout_protocol
    from refrain.service.observability import configure_logging

    settings = _service_settings(args)
    inherited = os.environ.get(_WORKER_SOCKET_FD)
    if inherited is not None:  # a worker: its supervisor ran the startup repairs, once for all of them
        settings = settings.model_copy(update={"startup_repairs": False})
    # The port first, then the index, both before uvicorn starts: a busy port (exit 4) or a
    # locked or foreign index (exit 3) is one error line, not a traceback after the startup.
    sock = (socket.socket(fileno=int(inherited)) if inherited is not None
            else _listening_socket(settings.host, settings.port))
    with closing(sock):
        if settings.cluster:
            from refrain.cluster import ClusterCatalog
            ClusterCatalog(settings.index_dir).close()
        else:
            try:  # read-only: another service process or the CLI may be writing it
                Refrain.open(settings.index_dir, mmap=True).close()
            except IndexOpenError:  # none yet (made now), or what keeps this directory from being served
                _open_index(settings.index_dir, create=True).close()
        configure_logging(settings.log_level, json_lines=settings.log_format == "json")
        if args.workers > 1 and inherited is None:
            from refrain.service.core import MatchService
            MatchService(settings).close()  # the startup repairs, before any worker serves a request
            return _supervise_workers(args.workers, sock, settings)
        logging.getLogger("refrain.service").info(
            "serving %s on http://%s:%s (database %s; analyst page /analyst, API docs /docs, readiness "
            "/v1/health/ready)", settings.index_dir, settings.host, settings.port, settings.db_path)
        # The service writes its own access line (with the request id): uvicorn's is off.
        config = uvicorn.Config(create_app(settings), log_level=settings.log_level, access_log=False,
                                log_config=None, timeout_keep_alive=settings.keep_alive_timeout,
                                limit_concurrency=settings.max_connections,
                                http=header_timeout_protocol(settings.header_timeout))
        uvicorn.Server(config).run(sockets=[sock])
    return EXIT_OK


def _supervise_workers(workers: int, sock: socket.socket, settings) -> int:
    """Run ``workers`` service processes accepting on ``sock``; stop them on SIGTERM or Ctrl-C.

    Each worker is a fresh ``refrain serve`` process (its own router, matcher and database
    connections) handed the listening socket, so the kernel spreads connections over them;
    its BLAS, OpenMP and numba pools are limited to the cores divided by the workers unless
    the environment sets them. A worker that dies later than ``_WORKER_CRASH_SECONDS`` after
    its start is started again; one that dies sooner stops the service (it would again).
    """
    import signal
    import subprocess

    log = logging.getLogger("refrain.service")
    threads = str(max(1, (os.cpu_count() or 1) // workers))
    env = {**os.environ, _WORKER_SOCKET_FD: str(sock.fileno()),
           **{name: os.environ.get(name, threads) for name in _THREAD_POOL_VARIABLES}}
    command = [sys.executable, "-m", "refrain.cli", "serve", "--cluster" if settings.cluster else "--index",
               str(settings.index_dir), "--db", str(settings.db_path), "--host", settings.host,
               "--port", str(settings.port)]
    stopping: list[int] = []

    def stop(signum, frame) -> None:
        stopping.append(signum)

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}

    def start() -> tuple[subprocess.Popen, float]:
        return subprocess.Popen(command, env=env, pass_fds=[sock.fileno()]), time.monotonic()

    running = [start() for _ in range(workers)]
    log.info("serving %s on http://%s:%s with %d worker processes (%s threads per pool each)", settings.index_dir,
             settings.host, settings.port, workers, threads)
    status = EXIT_OK
    try:
        while not stopping:
            for number, (process, started) in enumerate(running):
                if process.poll() is None:
                    continue
                if time.monotonic() - started < _WORKER_CRASH_SECONDS:
                    _error(f"service worker {process.pid} exited with code {process.returncode} "
                           f"{time.monotonic() - started:.0f} s after its start: stopping the service")
                    stopping.append(0)
                    status = EXIT_FAILED
                    break
                log.warning("service worker %d exited with code %d: starting another", process.pid,
                            process.returncode)
                running[number] = start()
            time.sleep(0.2)
    finally:
        for process, _ in running:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
        for process, _ in running:
            try:
                process.wait(_WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status


def _open_service_db(args):
    """The service database named by ``--db`` or beside ``--index`` (or ``REFRAIN_INDEX_DIR``)."""
    import sqlite3

    from refrain.service.db import SchemaError, ServiceDB

    if args.db is not None:
        db_path = args.db
    elif args.index is not None or os.environ.get("REFRAIN_INDEX_DIR"):
        db_path = _service_settings(args).db_path
    else:
        args.parser.error("give --index DIR or --db PATH (the service database)")
    try:
        return ServiceDB(db_path)
    except (sqlite3.DatabaseError, SchemaError, OSError) as err:
        raise CliError(f"{db_path}: cannot open the service database ({err})", EXIT_INDEX) from err


def cmd_keys_create(args) -> int:
    from refrain.service.db import PrincipalKindError

    with closing(_open_service_db(args)) as db:
        try:
            key, record = db.create_key(args.role, args.principal, args.label)
        except PrincipalKindError as err:
            raise CliError(str(err)) from None
    print(key)
    print(f"created {record.role} key {record.prefix}… for {record.principal} in {db.path}; it is shown only "
          "this once", file=sys.stderr)
    return EXIT_OK


def cmd_keys_list(args) -> int:
    with closing(_open_service_db(args)) as db:
        keys = db.list_keys()
    if args.json:
        for record in keys:
            print(json.dumps({"prefix": record.prefix, "role": record.role, "principal": record.principal,
                              "label": record.label, "created_at": record.created_at.isoformat(),
                              "revoked_at": record.revoked_at.isoformat() if record.revoked_at else None}))
        return EXIT_OK
    for record in keys:
        state = f"revoked {record.revoked_at:%Y-%m-%d %H:%M}" if record.revoked_at else "live"
        print(f"{record.prefix}  {record.role:<8}  {state:<22}  {record.principal}"
              + (f"  ({record.label})" if record.label else ""))
    return EXIT_OK


def cmd_keys_revoke(args) -> int:
    from refrain.service.db import LastAdminKeyError

    with closing(_open_service_db(args)) as db:
        try:
            record = db.revoke_key(args.prefix)
        except LastAdminKeyError as err:
            raise CliError(str(err)) from None
    if record is None:
        raise CliError(f"no API key with prefix {args.prefix} in {db.path}")
    print(f"revoked {record.role} key {record.prefix} of {record.principal}", file=sys.stderr)
    return EXIT_OK


def _rescan_options(args):
    from refrain.rescan.jobs import RescanOptions

    return RescanOptions(jobs=args.jobs, dask=args.dask)


def _run_rescan(args, start):
    """Run a rescan; its usage and connection problems become one error line and an exit code."""
    from refrain.rescan.jobs import RunUsageError

    try:
        return start()
    except RunUsageError as err:
        raise CliError(str(err), 2) from None
    except (OSError, TimeoutError) as err:
        if args.dask and args.dask != "local":
            raise CliError(f"cannot use the Dask scheduler {args.dask} ({err})", EXIT_INDEX) from None
        raise


def cmd_rescan_catalogue(args) -> int:
    from refrain.rescan.catalogue import rescan_catalogue

    report = _run_rescan(args, lambda: rescan_catalogue(_catalogue_name(args), args.out, _rescan_options(args),
                                                        resume=args.resume, cluster=args.cluster is not None))
    for group in report.groups:
        print(f"group {group['group']}: "
              + ", ".join(f"{t['track_id']} {t['source']}" for t in group["tracks"]))
        for pair in group["pairs"]:
            print(f"  {pair['track_id']} -> {pair['related_track_id']}  {pair['kind']}  "
                  f"score {pair['score']:.1f}  tempo ×{pair['time_ratio']:.3f}  "
                  f"pitch {pair['pitch_shift_semitones']:+.2f} st")
    for conflict in report.conflicts:
        print(f"conflict {conflict['conflict_id'] or '(not recorded)'}: work {conflict['work_id']} copies work "
              f"{conflict['claimed_work_id']} ({conflict['kind']}, score {conflict['score']:.1f}): "
              f"{conflict['status']}{' -> ' + conflict['resolution'] if conflict['resolution'] else ''}")
    run = report.run
    print(f"{len(run.records)} tracks scanned ({run.resumed} from the interrupted run), {run.failed} failed; "
          f"{len(report.groups)} groups of related works, {len(report.conflicts)} ownership conflicts; "
          f"outputs in {args.out}", flush=True)
    return EXIT_FAILED if run.failed else EXIT_OK


def cmd_rescan_uploads(args) -> int:
    import sqlite3
    from datetime import datetime, timezone

    from refrain.rescan.uploads import rescan_uploads
    from refrain.service.db import SchemaError

    since = None
    if args.since is not None:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            args.parser.error(f"--since: not an ISO 8601 date or instant: {args.since!r}")
        if since.tzinfo is None:
            since = since.replace(tzinfo=timezone.utc)
    settings = _service_settings(args)
    try:
        report = _run_rescan(args, lambda: rescan_uploads(
            settings.index_dir, settings.db_path, args.out, settings.review_confidence, since, args.apply,
            _rescan_options(args), resume=args.resume, lineage_of=args.lineage_of, cluster=settings.cluster))
    except FileNotFoundError as err:
        raise CliError(str(err), EXIT_INDEX) from None
    except (sqlite3.DatabaseError, SchemaError) as err:
        raise CliError(f"{settings.db_path}: cannot open the service database ({err})", EXIT_INDEX) from err
    for record in report.run.records:
        if record.get("changed"):
            print(f"{record['item']}  {record['old_verdict']} -> {record['new_verdict']}"
                  f"{'  (applied)' if record['applied'] else ''}  {record['filename']}: {record['why']}")
    run = report.run
    skipped = sum(record["status"] == "skipped" for record in run.records)
    print(f"{len(run.records)} decisions checked ({run.resumed} from the interrupted run), {skipped} skipped, "
          f"{run.failed} failed; {report.changed} verdicts would change, {report.applied} changed; "
          f"outputs in {args.out}", flush=True)
    return EXIT_FAILED if run.failed else EXIT_OK


def cmd_cluster_up(args) -> int:
    import signal as signals

    from refrain.cluster import ClusterCatalog, LocalCluster

    directory = args.cluster
    if (directory / "cluster.sqlite").exists():
        catalog = ClusterCatalog(directory)
        if args.shards is not None and args.shards != len(catalog.shards()):
            catalog.close()
            raise CliError(f"{directory} has {len(catalog.shards())} shards, not {args.shards}: add shards with "
                           "`refrain cluster add-shard`", 2)
    else:
        catalog = ClusterCatalog.create(directory, args.shards or 1)
    shards = catalog.shards()
    catalog.close()
    with LocalCluster(directory, shards, replicas=args.replicas) as local:
        local.wait_ready()
        print(f"cluster {directory}: {len(shards)} shards, {args.replicas} worker process(es) each; scheduler "
              f"address in {local.scheduler_file}. Use --cluster {directory} with ingest, match, serve, "
              "rescan. Ctrl-C stops it.", flush=True)
        # Blocked only now, so that the engine's processes do not inherit the mask.
        stop = {signals.SIGINT, signals.SIGTERM}
        signals.pthread_sigmask(signals.SIG_BLOCK, stop)
        signals.sigwait(stop)
    return EXIT_OK


def cmd_cluster_add_shard(args) -> int:
    from refrain.cluster import ClusterCatalog

    catalog = ClusterCatalog(args.cluster)
    try:
        shard = catalog.add_shard()
    finally:
        catalog.close()
    print(f"added shard {shard.shard_id} ({shard.directory}): new tracks go to it until it has caught up. "
          f"Start its worker: dask worker --scheduler-file {args.cluster}/scheduler.json --nthreads 1 "
          f"--resources {shard.resource}=1 (or restart `refrain cluster up`)")
    return EXIT_OK


def cmd_cluster_rebalance(args) -> int:
    from refrain.cluster import ClusterCatalog
    from refrain.cluster.rebalance import rebalance

    catalog = ClusterCatalog(args.cluster)
    try:
        moves = rebalance(catalog)
        seconds = catalog.seconds_per_shard()
    finally:
        catalog.close()
    for move in moves:
        print(f"track {move.track_id} ({move.seconds:.1f} s): shard {move.source} -> shard {move.destination}")
    print(f"moved {len(moves)} tracks; seconds per shard: "
          + ", ".join(f"{shard_id}: {held:.0f}" for shard_id, held in seconds.items()))
    return EXIT_OK


def _dask_address(text: str) -> str:
    if text == "local" or "://" in text:
        return text
    raise argparse.ArgumentTypeError(f"expected `local` or a scheduler address like tcp://host:8786, not {text!r}")


# -- entry point ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="refrain", epilog=EPILOG, formatter_class=formatter,
        description="Audio fingerprinting: find catalogue recordings inside uploaded audio.")
    parser.add_argument("--version", action="version", version=f"refrain {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, run, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                                  formatter_class=formatter)
        sub.set_defaults(run=run, parser=sub)
        return sub

    def index_option(sub, required=True, cluster=False):
        if not cluster:
            sub.add_argument("--index", type=Path, required=required, metavar="DIR", help="index directory")
            return
        where = sub.add_mutually_exclusive_group(required=required)
        where.add_argument("--index", type=Path, metavar="DIR", help="index directory")
        where.add_argument("--cluster", type=Path, metavar="DIR",
                           help="a cluster directory (`refrain cluster up`): its shards, through its scheduler")

    sub = command("ingest", cmd_ingest, "add recordings (files or folders) to an index, "
                                        "creating it if missing")
    index_option(sub, cluster=True)
    sub.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                     help="worker processes for decoding and fingerprinting (default 1)")
    sub.add_argument("--title", help="title of the recording (single-file ingest only)")
    sub.add_argument("--artist", help="artist of the recording (single-file ingest only)")
    sub.add_argument("--isrc", help="ISRC of the recording (single-file ingest only)")
    sub.add_argument("--progress-interval", type=float, default=30.0, metavar="SECONDS",
                     help="without a terminal, write a progress line at most this often (default 30)")
    sub.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders")

    sub = command("match", cmd_match, "find catalogue tracks in query files")
    index_option(sub, cluster=True)
    sub.add_argument("--json", action="store_true", help="one JSON object per query on stdout")
    sub.add_argument("--covers", action=argparse.BooleanOptionalAction, default=True,
                     help="search the melody tier for covers too (default; --no-covers: landmark tiers only, "
                          "faster for uploads of 16 s or more). It reports 95 %% of the benchmark's covers, "
                          "no false cover on same-style or real music, see docs/benchmarks.md)")
    sub.add_argument("paths", nargs="+", metavar="PATH", help="query files or folders")

    sub = command("remove", cmd_remove, "remove a track from an index")
    index_option(sub, cluster=True)
    sub.add_argument("track_id", type=int, metavar="TRACK_ID")

    sub = command("tracks", None, "the index's tracks: their ids (for `refrain remove`), sources and metadata")
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    for name, run, help_text in (("list", cmd_tracks_list, "list the index's tracks, by id"),
                                 ("show", cmd_tracks_show, "show one track's catalogue record")):
        action = actions.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                                    formatter_class=formatter)
        action.set_defaults(run=run, parser=action)
        index_option(action, cluster=True)
        action.add_argument("--json", action="store_true", help="JSON (one object per track)")
        if name == "show":
            action.add_argument("track_id", type=int, metavar="TRACK_ID")

    sub = command("upgrade", cmd_upgrade, "bring an index built by an earlier Refrain to the current "
                                          "layout, in place (faster lookups; no re-ingest)")
    index_option(sub)

    sub = command("info", cmd_info, "size of an index")
    index_option(sub, cluster=True)
    sub.add_argument("--json", action="store_true", help="print one JSON object")

    sub = command("demo", cmd_demo, "index the bundled sample catalogue and match the sample "
                                    "queries")
    index_option(sub, required=False)
    sub.epilog = EPILOG + "\nWithout --index the demo uses a temporary index, deleted afterwards.\n"

    sub = command("serve", cmd_serve, "run the HTTP match service on an index (see docs/service.md)")
    index_option(sub, cluster=True)
    sub.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    sub.add_argument("--port", type=int, default=None, help="port (default 8000)")
    sub.add_argument("--db", type=Path, default=None, metavar="PATH",
                     help="service database (default: <index>.service.sqlite beside the index)")
    sub.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                     help="service processes sharing the port (default 1), each matching on its own view of "
                          "the index (or its own router): one process uses about one core, run one per core")

    sub = command("keys", None, "manage the match service's API keys")
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="make an API key and print it (shown once)",
                                description="Make an API key and print it (shown once).",
                                epilog=EPILOG, formatter_class=formatter)
    create.set_defaults(run=cmd_keys_create, parser=create)
    create.add_argument("--role", required=True, choices=["uploader", "analyst", "admin", "rights_holder"])
    create.add_argument("--principal", required=True, metavar="NAME",
                        help="who the key acts for (organisation or team); created if missing")
    create.add_argument("--label", default=None, help="who or what the key is for")
    listing = actions.add_parser("list", help="list the API keys (prefixes, roles, principals)",
                                 description="List the API keys: prefix, role, live or revoked, principal.",
                                 epilog=EPILOG, formatter_class=formatter)
    listing.set_defaults(run=cmd_keys_list, parser=listing)
    listing.add_argument("--json", action="store_true", help="one JSON object per key")
    revoke = actions.add_parser("revoke", help="revoke an API key by its prefix",
                                description="Revoke an API key by its prefix (never the last live admin key).",
                                epilog=EPILOG, formatter_class=formatter)
    revoke.set_defaults(run=cmd_keys_revoke, parser=revoke)
    revoke.add_argument("prefix", metavar="PREFIX", help="the key's prefix, as `refrain keys list` shows it")
    for action in (create, listing, revoke):
        action.add_argument("--index", type=Path, default=None, metavar="DIR",
                            help="index directory (the database is <index>.service.sqlite)")
        action.add_argument("--db", type=Path, default=None, metavar="PATH", help="service database")

    sub = command("rescan", None, "batch rescans: the catalogue against itself, past uploads against "
                                  "today's catalogue and policies")
    kinds = sub.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, run, help_text in (
            ("catalogue", cmd_rescan_catalogue, "match every catalogue track against the index and group "
                                                "related works (copies, derivatives)"),
            ("uploads", cmd_rescan_uploads, "re-decide stored upload decisions with the current index, "
                                            "policies and licences; report (and --apply) verdict changes")):
        kind = kinds.add_parser(name, help=help_text, description=help_text, epilog=EPILOG,
                                formatter_class=formatter)
        kind.set_defaults(run=run, parser=kind)
        index_option(kind, cluster=True)
        if name == "uploads":
            kind.add_argument("--db", type=Path, default=None, metavar="PATH",
                              help="service database (default: <index>.service.sqlite beside the index)")
            kind.add_argument("--since", default=None, metavar="ISO",
                              help="only decisions made at or after this date/instant (UTC if no zone)")
            kind.add_argument("--apply", action="store_true",
                              help="write the changed verdicts to the database (the old ones stay in "
                                   "each decision's history)")
            kind.add_argument("--lineage-of", type=_positive_int, default=None, metavar="WORK",
                              help="only the decisions that matched this work or one of its published "
                                   "descendants (after its consent changed: docs/lineage.md)")
        kind.add_argument("--out", type=Path, required=True, metavar="DIR",
                          help="output folder: items.jsonl, summary.csv (and the checkpoint while unfinished)")
        kind.add_argument("--resume", action="store_true",
                          help="continue the interrupted run whose checkpoint is in --out")
        kind.add_argument("--jobs", type=_positive_int, default=1, metavar="N",
                          help="worker processes (or Dask workers with --dask local); default 1")
        kind.add_argument("--dask", type=_dask_address, default=None, metavar="local|ADDRESS",
                          help="run on Dask: `local` starts a LocalCluster of --jobs workers, "
                               "tcp://host:8786 uses a running scheduler")

    sub = command("cluster", None, "a catalogue partitioned into shards served by Dask (see docs/cluster.md)")
    actions = sub.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start a local cluster: a Dask scheduler and a worker per shard",
                            description="Create the cluster directory if missing (with --shards shards), start "
                                        "a Dask scheduler and one worker process per shard on this machine, "
                                        "and run until interrupted.", epilog=EPILOG, formatter_class=formatter)
    up.set_defaults(run=cmd_cluster_up, parser=up)
    up.add_argument("--shards", type=_positive_int, default=None, metavar="N",
                    help="shards of a new cluster (default 1); an existing cluster keeps its own")
    up.add_argument("--replicas", type=_positive_int, default=1, metavar="R",
                    help="worker processes per shard (default 1)")
    add = actions.add_parser("add-shard", help="add an empty shard: new tracks go to it until it has caught up",
                             description="Add an empty shard to a cluster.", epilog=EPILOG,
                             formatter_class=formatter)
    add.set_defaults(run=cmd_cluster_add_shard, parser=add)
    rebalance = actions.add_parser(
        "rebalance", help="move tracks between shards (their stored entries, no audio decoded) so that each "
                          "holds about as many catalogue seconds", epilog=EPILOG, formatter_class=formatter,
        description="Move tracks from the fullest shards to the emptiest, copying each track's stored entries "
                    "(no audio is decoded). Needs every shard's write lock: run it with no other writer.")
    rebalance.set_defaults(run=cmd_cluster_rebalance, parser=rebalance)
    for action in (up, add, rebalance):
        action.add_argument("--cluster", type=Path, required=True, metavar="DIR", help="the cluster directory")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``refrain`` command line; returns the process exit code."""
    for stream in (sys.stdout, sys.stderr):
        # Never die on a character the terminal's encoding lacks (e.g. "↔" under latin-1).
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    args = parser.parse_args(argv)
    tune_process()
    try:
        return args.run(args)
    except CliError as err:
        _error(err)
        return err.code
    except IndexOpenError as err:
        _error(err)
        return EXIT_INDEX
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): silence the flush at interpreter exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except (AudioDecodeError, FingerprintError, OSError) as err:
        _error(err)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
