"""`adafocus score --ray` and `adafocus preprocess --ray`: the same jobs on Ray Data, from one laptop to a cluster.

Scoring reuses apps/scoring/videos.py piece by piece: the input listing, the per-file decoding (`ScoreInputs`), the
per-batch model call and row formatting (`score_batch`) and the resumable output files. Only the
scheduling differs: files are listed once by this process (the driver); Ray tasks decode them; an actor
pool runs the model (one model per actor, one GPU per actor where the cluster has GPUs); the rows stream
back to the driver, which alone appends them to scores.csv / details.jsonl, as the local path does. So the
guarantees are the local path's: bad inputs are rows, a killed driver loses at most the batches in flight,
and a rerun skips the files that have a row, whatever the cluster size.

Losing a worker or a whole node (`run_to_completion`): Ray retries a lost task or actor call a few times
(bounded: a file that crashes its decoder every time must not retry forever), and Ray Data carries on past a
block whose retries are spent. The driver knows which files have a row, so when a pass over the files ends,
it submits again, as a new Ray Data pipeline sized for the nodes that are left, only the files still without
one; at most MAX_ATTEMPTS passes in one command. A pass that stops making progress after a node was lost
(Ray can wait on a dead node's objects or actors for a long time) is abandoned after a bounded wait and the
next pass goes on without that node. A run that ends with files still without a row names them and fails.
Preprocessing runs `preprocess_scan` (datasets/mri/preprocess.py) as one Ray task per scan, through the same
passes; the driver updates the manifest as results arrive, exactly as the local process pool does.

`--ray` without an address starts a private Ray instance on this machine (`address="local"`), whatever
cluster the machine has registered; `--ray auto` joins the registered one. On a cluster, every node must
see the inputs (and --thumbnails, or the preprocessing cache) at the same paths, e.g. on a shared file
system. Workers import the torchvision shim through a worker setup hook and print nothing: no file headers,
no patient fields.
"""
from __future__ import annotations

import json
import os
import pickle
import queue
import threading
import time
from collections.abc import Callable, Generator, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from adafocus.apps.scoring.outputs import csv_columns
from adafocus.apps.scoring.videos import (
    ScoreInputs,
    ScoreSummary,
    collate_scored,
    collect_inputs,
    cpu_threads,
    finish_summary,
    load_scoring_model,
    prepare_outputs,
    score_batch,
)
from adafocus.core.device import resolve_device

LOCAL = "local"            # --ray without an address: start a private Ray instance on this machine
# Within a pass, a task or actor call whose worker died is retried this often; a batch that kills its worker
# every time (a file that crashes the decoder) then gets no rows in that pass, and the rest goes on. Model
# actors are restarted whenever they die (-1, Ray Data's default): an actor pool whose last actor has spent
# its restarts waits forever. Each restart is caused by a death that a bounded retry pays for (or by a lost
# node); an actor that dies in its constructor is not restarted by Ray, and fails the pass.
MAX_RESTARTS = -1
MAX_RETRIES = 3
# Passes over the files still without a result, in one command (see the module docstring).
MAX_ATTEMPTS = 3
# A pass is abandoned when no batch came back for this long after a node was lost (at least 3x the longest
# wait between two batches seen so far), or for this long at all (nothing lost: Ray may be waiting for an
# autoscaler to bring up nodes).
NODE_LOSS_STALL_S = 45.0
STALL_S = 600.0


# ----------------------------------------------------------------------------------------------------
# Ray session


def worker_setup() -> None:
    """Runs first in every Ray worker process: the torchvision shim, before anything imports torchvision."""
    from adafocus.core._torchvision_compat import install_torchvision_shim

    install_torchvision_shim()


def ray_init_kwargs(address: str | None, num_cpus: int | None = None) -> dict[str, Any]:
    """ray.init arguments: join `address` ("HOST:PORT", "auto" = the cluster this machine registered,
    "ray://..."), or, for None / "local", start a private instance on 127.0.0.1 without a dashboard. The
    private instance is asked for with address="local": with no address Ray would join whatever cluster the
    machine has registered (its current-cluster file, even one left by a dead `ray start --head`)."""
    runtime_env = {"worker_process_setup_hook": f"{__name__}.worker_setup",
                   "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    if address and address != LOCAL:
        return {"address": address, "runtime_env": runtime_env, "log_to_driver": False}
    return {"address": LOCAL, "num_cpus": num_cpus, "include_dashboard": False, "_node_ip_address": "127.0.0.1",
            "runtime_env": runtime_env, "log_to_driver": False}


def init_ray(address: str | None, num_cpus: int | None = None) -> None:
    """ray.init(**ray_init_kwargs(...)). A private instance stays on 127.0.0.1: Ray replaces 127.0.0.1 by the
    machine's outward address (in this process and in every process it starts) unless it runs with
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, Ray's own switch for single-machine instances; we set it while the
    instance starts (its processes keep it), and put both back for whatever this process joins later."""
    import ray
    import ray._private.ray_constants as constants

    if address and address != LOCAL:
        ray.init(**ray_init_kwargs(address, num_cpus))
        return
    variable = constants.ENABLE_RAY_CLUSTERS_ENV_VAR
    saved_env, saved_flag = os.environ.get(variable), constants.ENABLE_RAY_CLUSTER
    os.environ[variable], constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        ray.init(**ray_init_kwargs(address, num_cpus))
    finally:
        constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = saved_env


@dataclass
class RaySession:
    """Ray connected: `owned` when this module started (or joined) it and so may restart the connection."""

    address: str | None
    num_cpus: int | None
    owned: bool
    preserve_order: bool = True

    def configure(self) -> None:
        """Ray Data keeps the input order if asked, leaves progress to our own bar, and carries on past blocks
        whose retries are spent (max_errored_blocks=-1: their files get no result in this pass, and
        `run_to_completion` submits them again, then names those that never got one: nothing is dropped
        silently). An actor that dies while it starts fails the pass, rather than being replaced forever."""
        import ray.data

        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = self.preserve_order
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        context.max_errored_blocks = -1
        context.max_consecutive_actor_init_deaths = 0

    def fresh(self) -> bool:
        """Drop everything this driver left on the cluster (a stalled pass's actors and tasks) by ending its
        Ray job and starting a new one (on a cluster, a driver's actors and tasks end with its job); False
        where the session is the caller's, which this module must not end."""
        if not self.owned:
            return False
        import ray
        import ray._private.auto_init_hook as auto_init

        # the stalled pass's executor threads may still call Ray as they wind down: let them fail rather
        # than start a Ray instance of their own (Ray's auto-init) before we connect again
        saved, auto_init.enable_auto_connect = auto_init.enable_auto_connect, False
        try:
            ray.shutdown()
            connect(self.address, self.num_cpus)
        finally:
            auto_init.enable_auto_connect = saved
        self.configure()
        return True


def connect(address: str | None, num_cpus: int | None) -> None:
    """init_ray, with the failure in one line."""
    try:
        init_ray(address, num_cpus)
    except Exception as error:  # noqa: BLE001  (Ray raises several kinds; the user needs one line)
        where = "a local Ray instance" if address in (None, LOCAL) else f"the Ray cluster at {address}"
        raise ValueError(f"cannot start or reach {where}: {one_line(error)}") from None


@contextmanager
def open_session(address: str | None, num_cpus: int | None = None, *, preserve_order: bool = True):
    """A `RaySession` for the block (see `RaySession.configure` for Ray Data's settings): the caller's when
    Ray is already connected, else one started (and shut down) here."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    session = RaySession(address, num_cpus, owned=not ray.is_initialized(), preserve_order=preserve_order)
    if session.owned:
        connect(address, num_cpus)
    session.configure()
    try:
        yield session
    except ray.exceptions.RayError as error:
        raise ValueError(f"the Ray job stopped ({one_line(error)}); what was written is kept: run the command "
                         "again to resume") from None
    finally:
        if session.owned:
            ray.shutdown()


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, *, preserve_order: bool = True):
    """`open_session`, yielding the ray module."""
    with open_session(address, num_cpus, preserve_order=preserve_order):
        import ray

        yield ray


def one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (Ray's carry whole remote tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def model_actor_resources(cluster: dict[str, float], device: str) -> dict[str, Any]:
    """How the model actors are placed: one per GPU where there are GPUs (and --device allows them); on CPUs,
    actors of up to 4 threads each that together take about half the cores (the rest decode). A cluster
    down to one CPU (the others lost) shares it between the actor and the decode tasks, so neither waits for
    the other forever. `decode_cpus`: what each decode task asks for."""
    gpus = int(cluster.get("GPU", 0))
    if gpus and device != "cpu":
        return {"num_gpus": 1, "num_cpus": 1, "concurrency": (1, gpus), "threads": 1, "device": "cuda",
                "decode_cpus": 1}
    if device == "cuda":
        raise ValueError("--device cuda, but the Ray cluster has no GPU")
    if cluster.get("CPU", 0) < 2:
        return {"num_gpus": 0, "num_cpus": 0.5, "concurrency": (1, 1), "threads": 1, "device": "cpu",
                "decode_cpus": 0.5}
    cpus = int(cluster["CPU"])
    threads = max(1, min(4, cpus // 2))
    return {"num_gpus": 0, "num_cpus": threads, "concurrency": (1, max(1, cpus // (2 * threads))),
            "threads": threads, "device": "cpu", "decode_cpus": 1}


# ----------------------------------------------------------------------------------------------------
# Passes until every job has a result: Ray's own bounded retries within a pass, the driver's between passes


@dataclass
class PassOutcome:
    """How one pass over the jobs ended: "done" (the stream ended), "error" (it raised) or "stalled"."""

    how: str
    reason: str = ""
    nodes_lost: int = 0


@dataclass
class Completion:
    """What `run_to_completion` did: the jobs that got a result, its passes, and why the last one ended."""

    done: set = field(default_factory=set)
    passes: list[PassOutcome] = field(default_factory=list)


    def why(self) -> str:
        reasons = [f"pass {i}: {p.how}{f' ({p.reason})' if p.reason else ''}" for i, p in enumerate(self.passes, 1)]
        return "; ".join(reasons)


def alive_nodes() -> set[str]:
    """Node ids the cluster counts as alive now (empty if the cluster cannot be asked)."""
    import ray

    try:
        return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
    except Exception:  # noqa: BLE001  (the GCS itself gone: the pass ends with an error anyway)
        return set()


def stream_pass(dataset, keys: Callable[[dict[str, np.ndarray]], Iterable[Hashable]], done: set, *,
                node_loss_stall_s: float, stall_s: float, poll_s: float = 1.0,
                nodes: Callable[[], set[str]] = alive_nodes) -> Generator[dict[str, np.ndarray], None, PassOutcome]:
    """Yield `dataset`'s batches, adding the jobs each one brings (`keys(batch)`) to `done`, until the stream
    ends, raises, or stalls: no new job done for `node_loss_stall_s` (or 3x the longest wait seen so far, if
    longer) after a node was lost, or for `stall_s` at all. Returns (as the generator's value) a
    `PassOutcome`. The batches are fetched by a helper thread, so the wait is bounded whatever Ray blocks on;
    a stalled pass's executor is shut down (its actors and tasks released)."""
    batches: queue.Queue = queue.Queue(maxsize=4)
    stop = threading.Event()

    def fetch() -> None:
        try:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                while not stop.is_set():
                    try:
                        batches.put(("batch", batch), timeout=poll_s)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            batches.put(("end", None))
        except BaseException as error:  # noqa: BLE001  (handed to the caller's thread)
            batches.put(("error", error))

    fetcher = threading.Thread(target=fetch, name="ray-data-fetch", daemon=True)
    fetcher.start()
    at_start = nodes()
    lost: set[str] = set()
    lost_at = None
    last = started = time.monotonic()
    longest_wait = 0.0
    next_check = started
    try:
        while True:
            try:
                kind, value = batches.get(timeout=poll_s)
            except queue.Empty:
                now = time.monotonic()
                if now >= next_check:  # one question to the GCS every few seconds
                    next_check = now + 2.0
                    gone = at_start - nodes()
                    if gone - lost:
                        lost |= gone
                        lost_at = now
                limit = max(node_loss_stall_s, 3 * longest_wait)
                if lost_at is not None and now - max(last, lost_at) > limit:
                    return PassOutcome("stalled", f"no result for {now - max(last, lost_at):.0f}s after "
                                                  f"{len(lost)} node(s) were lost", len(lost))
                if now - last > stall_s:
                    return PassOutcome("stalled", f"no result for {now - last:.0f}s", len(lost))
                continue
            if kind == "batch":
                new = set(keys(value)) - done
                done |= new
                if new:
                    now = time.monotonic()
                    if last != started:  # the first result also waited for the start-up
                        longest_wait = max(longest_wait, now - last)
                    last = now
                yield value
            elif kind == "end":
                return PassOutcome("done", nodes_lost=len(at_start - nodes()))
            else:
                return PassOutcome("error", one_line(value), len(at_start - nodes()))
    finally:
        stop.set()
        if fetcher.is_alive():
            executor = getattr(dataset, "_current_executor", None)  # Ray Data's own handle on the execution
            if executor is not None:
                with suppress(Exception):  # best effort: the next pass does not depend on it
                    executor.shutdown(force=True)
            fetcher.join(timeout=2.0)  # a daemon: if Ray still holds it, it is left behind


def run_to_completion(jobs: Sequence[Hashable], build: Callable[[list, int], Any],
                      keys: Callable[[dict[str, np.ndarray]], Iterable[Hashable]], completion: Completion, *,
                      attempts: int = MAX_ATTEMPTS, node_loss_stall_s: float = NODE_LOSS_STALL_S,
                      stall_s: float = STALL_S, log: Callable[[str], None] = print, what: str = "files",
                      nodes: Callable[[], set[str]] = alive_nodes,
                      session: RaySession | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield the batches of `build(jobs without a result, pass number)` (a Ray Data dataset), pass after pass,
    at most `attempts` passes, until every job has a result (`keys(batch)`: the jobs a batch brings one for;
    the caller drops those it already has). Each pass is planned on the cluster as it is then, so the work
    of a lost node goes to the nodes left. `completion` records the jobs done and how each pass ended. After
    a stalled pass, `session` (if given and ours) starts a fresh Ray job, which ends the stalled pass's
    actors and tasks wherever they are."""
    for number in range(1, attempts + 1):
        left = [job for job in jobs if job not in completion.done]
        if not left:
            return
        if number > 1:
            previous = completion.passes[-1]
            lost = f", {previous.nodes_lost} node(s) lost" if previous.nodes_lost else ""
            log(f"ray: {len(left)} {what} still without a result after pass {number - 1} ({previous.how}"
                f"{': ' + previous.reason if previous.reason else ''}{lost}); submitting them again on the "
                f"{len(nodes())} node(s) alive (pass {number} of {attempts})")
        outcome = yield from stream_pass(build(left, number), keys, completion.done,
                                         node_loss_stall_s=node_loss_stall_s, stall_s=stall_s, nodes=nodes)
        completion.passes.append(outcome)
        if outcome.how == "stalled" and number < attempts and session is not None and session.fresh():
            log("ray: started a fresh Ray job after the stalled pass")


class IncompleteRun(ValueError):
    """Files still without a row when every pass is spent (a ValueError: the CLI prints it in one line and
    exits 2). `summary` counts what was written; `missing` names the rest, in input order."""

    def __init__(self, message: str, summary: ScoreSummary, missing: list[str]):
        super().__init__(message)
        self.summary = summary
        self.missing = missing


# ----------------------------------------------------------------------------------------------------
# Scoring: decode tasks -> model actors -> rows back to the driver


def decode_batch(batch: dict[str, np.ndarray], num_frames: int, size: int,
                 eval_crop: float = 1.0) -> dict[str, np.ndarray]:
    """Ray task: paths -> pickled `ScoreInputs` items (clip, clip record or the reason it failed)."""
    items = ScoreInputs(list(batch["path"]), num_frames, size, eval_crop)
    return {"path": batch["path"], "item": np.array([pickle.dumps(items[i]) for i in range(len(items))],
                                                    dtype=object)}


class ModelScorer:
    """Ray actor: one model; a batch of decoded items -> its CSV rows and details records (as JSON text)."""

    def __init__(self, checkpoint: str, budget: float | None, device: str, thumbnails: str | None,
                 threads: int, engine: str = "auto", precision: str = "fp32"):
        self.device = resolve_device(device)
        self.threads = threads
        with cpu_threads(self.device, threads):
            self.model, self.class_names, self.policy, _ = load_scoring_model(
                checkpoint, self.device, budget, engine=engine, precision=precision)
        self.thumb_dir = None if thumbnails is None else Path(thumbnails)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        items = [pickle.loads(blob) for blob in batch["item"]]
        with cpu_threads(self.device, self.threads):
            rows, records = score_batch(self.model, collate_scored(items), self.policy, self.class_names,
                                         self.thumb_dir, self.device, ScoreSummary(files=len(items)))
        return {"path": np.array([item["path"] for item in items], dtype=object),
                "row": np.array([json.dumps(row) for row in rows], dtype=object),
                "record": np.array([json.dumps(record) for record in records], dtype=object)}


def scoring_dataset(paths: Sequence[str], *, checkpoint: str, budget: float | None, thumbnails: str | None,
                    num_frames: int, size: int, batch_size: int, device: str, eval_crop: float = 1.0,
                    engine: str = "auto", precision: str = "fp32", scorer: type = ModelScorer,
                    files_per_block: int | None = None):
    """The lazy Ray Data pipeline for `paths` (executed when its batches are iterated), planned on the cluster
    as it is now. `files_per_block`: how many files one decode task takes (default `batch_size`; the later
    passes take one, so that a file that kills its decoder takes no other file down with it)."""
    import ray
    import ray.data

    placement = model_actor_resources(ray.cluster_resources(), device)
    min_actors, max_actors = placement["concurrency"]
    per_block = files_per_block or batch_size
    blocks = max(1, -(-len(paths) // per_block))
    with bounded_retries():
        return (ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
                .map_batches(decode_batch, fn_kwargs={"num_frames": num_frames, "size": size, "eval_crop": eval_crop},
                             batch_size=per_block, num_cpus=placement["decode_cpus"], max_retries=MAX_RETRIES)
                .map_batches(scorer, fn_constructor_kwargs={
                                 "checkpoint": checkpoint, "budget": budget, "device": placement["device"],
                                 "thumbnails": thumbnails, "threads": placement["threads"], "engine": engine,
                                 "precision": precision},
                             batch_size=batch_size,
                             compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
                             num_cpus=placement["num_cpus"], num_gpus=placement["num_gpus"],
                             max_restarts=MAX_RESTARTS, max_task_retries=MAX_RETRIES))


@contextmanager
def bounded_retries():
    """Ray Data's own defaults retry a dying worker forever, so one file that crashes its process (a decoder
    segfault) would hang the job; we bound the retries through the remote arguments, which Ray 2.60 marks
    deprecated (hence the pin ray<2.64 in pyproject.toml) without a replacement. What the bounded retries
    leave without a result, `run_to_completion` submits again."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        yield


def score_on_ray(inputs: Sequence[str], checkpoint: str | Path, out_csv: str | Path, *,
                 details: str | Path | None = None, budget: float | None = None,
                 thumbnails: str | Path | None = None, device: str = "auto", batch_size: int = 16,
                 address: str | None = None, num_cpus: int | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, engine: str = "auto", precision: str = "fp32",
                 scorer: type = ModelScorer, attempts: int = MAX_ATTEMPTS,
                 node_loss_stall_s: float = NODE_LOSS_STALL_S, stall_s: float = STALL_S) -> ScoreSummary:
    """`score_videos` on Ray Data (same outputs, same guarantees; see the module docstring).

    address: a Ray cluster ("HOST:6379", "auto", "ray://HOST:10001"), or None / "local" to start a private
    Ray instance here with `num_cpus` CPUs (default: all). `scorer` is the actor class (tests swap in one that
    dies). Files without a row after a pass are submitted again, at most `attempts` passes in all (see
    `run_to_completion`); if some still have none, raises `IncompleteRun` naming them, after writing the rest.
    """
    started = time.perf_counter()
    paths = collect_inputs(inputs)
    # loaded once here too: a bad checkpoint or budget fails in one line before any cluster work starts
    model, class_names, _, eval_crop = load_scoring_model(checkpoint, torch.device("cpu"), budget, engine="torch")
    num_frames, size = model.config.num_candidates, model.config.frame_size
    del model
    final, thumb_dir, done = prepare_outputs(out_csv, details, thumbnails, csv_columns(class_names))
    todo = [p for p in paths if p not in done]
    summary = ScoreSummary(files=len(paths), skipped=len(paths) - len(todo))
    if summary.skipped:
        log(f"skipping {summary.skipped} of {len(paths)} files already in {final.csv}")
    missing: list[str] = []
    completion = Completion()
    if todo:
        from tqdm import tqdm

        def build(left: list[str], number: int):
            # later passes: one file per decode task, and model batches a quarter as large each pass, so that
            # a file that kills its worker every time leaves fewer and fewer others without a row
            return scoring_dataset(left, checkpoint=str(Path(checkpoint).absolute()), budget=budget,
                                   thumbnails=None if thumb_dir is None else str(thumb_dir.absolute()),
                                   num_frames=num_frames, size=size, device=device, eval_crop=eval_crop,
                                   batch_size=max(1, batch_size // 4 ** (number - 1)), engine=engine,
                                   precision=precision, scorer=scorer, files_per_block=None if number == 1 else 1)

        with open_session(address, num_cpus) as session, \
                tqdm(total=len(todo), unit="file", dynamic_ncols=True, desc="scoring on ray",
                     disable=not progress) as bar:
            writer = StreamedRows(final, set(done), summary, bar)
            loop_started = time.perf_counter()
            for batch in run_to_completion(todo, build, batch_paths, completion, attempts=attempts,
                                           node_loss_stall_s=node_loss_stall_s, stall_s=stall_s, log=log,
                                           session=session):
                writer(batch)
            summary.loop_s = time.perf_counter() - loop_started
        missing = [p for p in todo if p not in completion.done]
    summary = finish_summary(summary, final, thumb_dir, paths, todo, started)
    if missing:
        for path in missing:
            log(f"no row: {path}")
        raise IncompleteRun(
            f"{len(missing)} of {len(todo)} files got no row after {len(completion.passes)} passes on the Ray "
            f"cluster ({completion.why()}); they are listed above. {summary.line()}. The rows written are kept: "
            "run the command again to score the rest", summary, missing)
    return summary


def batch_paths(batch: dict[str, np.ndarray]) -> list[str]:
    return [str(path) for path in batch["path"]]


class StreamedRows:
    """Appends each streamed batch's rows for files not yet written (a retried batch, or one from an abandoned
    pass, may bring a file twice) and returns the paths it wrote; decode_ms / model_ms in the summary are
    summed from the rows."""

    def __init__(self, final, done: set[str], summary: ScoreSummary, bar=None):
        self.final, self.done, self.summary, self.bar = final, done, summary, bar
        self.written: set[str] = set()

    def __call__(self, batch: dict[str, np.ndarray]) -> list[str]:
        rows, records, paths = [], [], []
        for path, row, record in zip(batch["path"], batch["row"], batch["record"]):
            path = str(path)
            if path in self.done or path in self.written:
                continue
            self.written.add(path)
            paths.append(path)
            rows.append(json.loads(row))
            records.append(json.loads(record))
        if rows:
            self.final.append(rows, records)
        for row in rows:
            self.summary.decode_ms += float(row[-2] or 0)
            self.summary.model_ms += float(row[-1] or 0)
        if self.bar is not None:
            self.bar.update(len(rows))
        return paths


def write_streamed_rows(batches: Iterator[dict[str, np.ndarray]], final, done: set[str], summary: ScoreSummary,
                        *, progress: bool, total: int) -> set[str]:
    """Append every batch through `StreamedRows`; return the paths written."""
    from tqdm import tqdm

    with tqdm(total=total, unit="file", dynamic_ncols=True, desc="scoring on ray", disable=not progress) as bar:
        writer = StreamedRows(final, done, summary, bar)
        for batch in batches:
            writer(batch)
    return writer.written


# ----------------------------------------------------------------------------------------------------
# Preprocessing: one Ray task per scan


def preprocess_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: pickled `preprocess_scan` arguments -> statuses ("ok" / "error: <step>: <reason>")."""
    import SimpleITK as sitk
    from adafocus.datasets.mri import preprocess

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the task holds one CPU
    statuses = [preprocess.preprocess_scan(*pickle.loads(job)) for job in batch["job"]]
    return {"index": batch["index"], "status": np.array(statuses, dtype=object)}


def ray_scan_executor(address: str | None, num_cpus: int | None = None, *, attempts: int = MAX_ATTEMPTS,
                      node_loss_stall_s: float = NODE_LOSS_STALL_S, stall_s: float = STALL_S,
                      log: Callable[[str], None] = print):
    """A `ScanExecutor` (datasets/mri/preprocess.py) that runs the scans as Ray tasks on `address` (or on a
    private Ray instance started here), pass after pass for the scans without a result (see
    `run_to_completion`). A scan that has none after every pass is recorded as an error that says why."""
    from adafocus.datasets.mri.manifest import error_status

    def run(jobs: dict[int, tuple], workers: int) -> Iterator[tuple[int, str]]:
        if not jobs:
            return
        import ray.data

        def build(left: list[int], number: int):
            with bounded_retries():
                return (ray.data.from_items([{"index": i, "job": pickle.dumps(jobs[i])} for i in left],
                                            override_num_blocks=len(left))
                        .map_batches(preprocess_batch, batch_size=1, num_cpus=1, max_retries=MAX_RETRIES))

        completion = Completion()
        reported: set[int] = set()
        with open_session(address, num_cpus, preserve_order=False) as session:
            for batch in run_to_completion(list(jobs), build, lambda b: [int(i) for i in b["index"]], completion,
                                           attempts=attempts, node_loss_stall_s=node_loss_stall_s,
                                           stall_s=stall_s, log=log, what="scans", session=session):
                for index, status in zip(batch["index"], batch["status"]):
                    if int(index) not in reported:
                        reported.add(int(index))
                        yield int(index), str(status)
        for index in jobs.keys() - reported:
            yield index, error_status(f"no result from the Ray cluster after {len(completion.passes)} passes "
                                      f"(each retried {MAX_RETRIES} times: {completion.why()})")

    return run


# ----------------------------------------------------------------------------------------------------
# `adafocus bench score --ray`: the Ray path against the local path on the same files, in one run


def bench_ray_against_local(paths: Sequence[str], checkpoint: str | Path, scratch: Path, *, workers: int,
                            batch_size: int, device: str, address: str | None, engine: str = "auto",
                            precision: str = "fp32") -> dict[str, Any]:
    """Score `paths` with the local path, then with Ray (into separate CSVs); files/s of each whole scoring
    call (model loading included), Ray's start-up time apart, and whether both wrote the same rows."""
    from adafocus.apps.scoring.outputs import read_rows
    from adafocus.apps.scoring.videos import score_videos

    quiet = {"progress": False, "log": lambda _: None, "engine": engine, "precision": precision}
    local = score_videos(paths, checkpoint, scratch / "local.csv", device=device, workers=workers,
                         batch_size=batch_size, **quiet)
    started = time.perf_counter()
    with ray_session(address) as ray:
        start_s = time.perf_counter() - started
        cpus = int(ray.cluster_resources().get("CPU", 0))
        remote = score_on_ray(paths, checkpoint, scratch / "ray.csv", device=device, batch_size=batch_size,
                              address=address, **quiet)

    def labels(path: Path) -> dict[str, tuple[str, str]]:
        return {row["path"]: (row["status"], row["label"]) for row in read_rows(path)[1]}

    files = local.scored + local.failed
    return {"files": files, "failed": local.failed, "batch_size": batch_size, "workers": workers,
            "ray_cpus": cpus, "local_files_per_s": files / local.wall_s,
            "ray_files_per_s": (remote.scored + remote.failed) / remote.wall_s, "ray_start_s": start_s,
            "ray_files_per_s_with_start": (remote.scored + remote.failed) / (remote.wall_s + start_s),
            "same_labels": labels(scratch / "local.csv") == labels(scratch / "ray.csv")}


def format_ray_bench(result: dict[str, Any]) -> str:
    ratio = result["ray_files_per_s"] / result["local_files_per_s"]
    lines = [
        (f"{result['files']} files ({result['failed']} failed), batch {result['batch_size']}; each rate is a "
         "whole scoring call, model loading included"),
        f"local ({result['workers']} decode workers): {result['local_files_per_s']:.2f} files/s",
        (f"ray ({result['ray_cpus']} CPUs): {result['ray_files_per_s']:.2f} files/s "
         f"({result['ray_files_per_s_with_start']:.2f} counting the {result['ray_start_s']:.1f} s Ray start)"),
        f"ray / local: {ratio:.2f}x; same labels: {'yes' if result['same_labels'] else 'NO'}",
    ]
    return "\n".join(lines)
