"""`adafocus score --ray` and `adafocus preprocess --ray`: the same jobs on Ray Data, from one laptop to a cluster.

Scoring reuses apps/scoring/videos.py piece by piece: the input listing, the per-file decoding (`ScoreInputs`), the
per-batch model call and row formatting (`score_batch`) and the resumable output files. Only the
scheduling differs: files are listed once by this process (the driver); Ray tasks decode them; an actor
pool runs the model (one model per actor, one GPU per actor where the cluster has GPUs); the rows stream
back to the driver, which alone appends them to scores.csv / details.jsonl, as the local path does. So the
guarantees are the local path's: bad inputs are rows, a killed driver loses at most the batches in flight,
and a rerun skips the files that have a row, whatever the cluster size. A worker that dies is replaced and
its batch retried (actor restarts, task retries); the driver writes each file's row once even if a retried
batch comes back twice.

Preprocessing runs `preprocess_scan` (datasets/mri/preprocess.py) as one Ray task per scan; the driver
updates the manifest as results arrive, exactly as the local process pool does.

On a cluster, every node must see the inputs (and --thumbnails, or the preprocessing cache) at the same
paths, e.g. on a shared file system. Workers import the torchvision shim through a worker setup hook and
print nothing: no file headers, no patient fields.
"""
from __future__ import annotations

import json
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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

LOCAL = "local"            # --ray without an address: start a Ray instance on this machine
# A worker that dies is replaced and its batch retried this often; a batch that kills its worker every time
# (a file that crashes the decoder) then gets no rows, and the rest of the job goes on.
MAX_RESTARTS = 3
MAX_RETRIES = 3


# ----------------------------------------------------------------------------------------------------
# Ray session


def worker_setup() -> None:
    """Runs first in every Ray worker process: the torchvision shim, before anything imports torchvision."""
    from adafocus.core._torchvision_compat import install_torchvision_shim

    install_torchvision_shim()


def ray_init_kwargs(address: str | None, num_cpus: int | None = None) -> dict[str, Any]:
    """ray.init arguments: join `address`, or start a local instance on 127.0.0.1 without a dashboard."""
    runtime_env = {"worker_process_setup_hook": f"{__name__}.worker_setup",
                   "env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}
    if address and address != LOCAL:
        return {"address": address, "runtime_env": runtime_env, "log_to_driver": False}
    return {"num_cpus": num_cpus, "include_dashboard": False, "_node_ip_address": "127.0.0.1",
            "runtime_env": runtime_env, "log_to_driver": False}


@contextmanager
def ray_session(address: str | None, num_cpus: int | None = None, *, preserve_order: bool = True):
    """Ray connected for the block: the caller's session when one is open, else one started (and shut down)
    here. Ray Data keeps the input order if asked, leaves progress to our own bar, and carries on past blocks
    whose retries are spent (their files get no result; the caller reports them)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import ray.data

    owned = not ray.is_initialized()
    if owned:
        try:
            ray.init(**ray_init_kwargs(address, num_cpus))
        except Exception as error:  # noqa: BLE001  (Ray raises several kinds; the user needs one line)
            where = "a local Ray instance" if address in (None, LOCAL) else f"the Ray cluster at {address}"
            raise ValueError(f"cannot start or reach {where}: {one_line(error)}") from None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = preserve_order
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.max_errored_blocks = -1
    try:
        yield ray
    except ray.exceptions.RayError as error:
        raise ValueError(f"the Ray job stopped ({one_line(error)}); what was written is kept: run the command "
                         "again to resume") from None
    finally:
        if owned:
            ray.shutdown()


def one_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (Ray's carry whole remote tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def model_actor_resources(cluster: dict[str, float], device: str) -> dict[str, Any]:
    """How the model actors are placed: one per GPU where there are GPUs (and --device allows them); on CPUs,
    actors of up to 4 threads each that together take about half the cores (the rest decode)."""
    gpus = int(cluster.get("GPU", 0))
    if gpus and device != "cpu":
        return {"num_gpus": 1, "num_cpus": 1, "concurrency": (1, gpus), "threads": 1, "device": "cuda"}
    if device == "cuda":
        raise ValueError("--device cuda, but the Ray cluster has no GPU")
    cpus = max(1, int(cluster.get("CPU", 1)))
    threads = max(1, min(4, cpus // 2))
    return {"num_gpus": 0, "num_cpus": threads, "concurrency": (1, max(1, cpus // (2 * threads))),
            "threads": threads, "device": "cpu"}


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
                    engine: str = "auto",
                    precision: str = "fp32", scorer: type = ModelScorer):
    """The lazy Ray Data pipeline for `paths` (executed when its batches are iterated)."""
    import ray
    import ray.data

    placement = model_actor_resources(ray.cluster_resources(), device)
    min_actors, max_actors = placement["concurrency"]
    blocks = max(1, -(-len(paths) // batch_size))
    with bounded_retries():
        return (ray.data.from_items([{"path": p} for p in paths], override_num_blocks=blocks)
                .map_batches(decode_batch, fn_kwargs={"num_frames": num_frames, "size": size, "eval_crop": eval_crop},
                             batch_size=batch_size, num_cpus=1, max_retries=MAX_RETRIES)
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
    deprecated (hence the pin ray<2.64 in pyproject.toml) without a replacement."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        yield


def score_on_ray(inputs: Sequence[str], checkpoint: str | Path, out_csv: str | Path, *,
                 details: str | Path | None = None, budget: float | None = None,
                 thumbnails: str | Path | None = None, device: str = "auto", batch_size: int = 16,
                 address: str | None = None, num_cpus: int | None = None, progress: bool = True,
                 log: Callable[[str], None] = print, engine: str = "auto", precision: str = "fp32",
                 scorer: type = ModelScorer) -> ScoreSummary:
    """`score_videos` on Ray Data (same outputs, same guarantees; see the module docstring).

    address: a Ray cluster ("HOST:6379", "auto", "ray://HOST:10001"), or None / "local" to start Ray here
    with `num_cpus` CPUs (default: all). `scorer` is the actor class (tests swap in one that dies).
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
    if todo:
        with ray_session(address, num_cpus):
            dataset = scoring_dataset(todo, checkpoint=str(Path(checkpoint).absolute()), budget=budget,
                                      thumbnails=None if thumb_dir is None else str(thumb_dir.absolute()),
                                      num_frames=num_frames, size=size, batch_size=batch_size, device=device,
                                      eval_crop=eval_crop, engine=engine, precision=precision, scorer=scorer)
            loop_started = time.perf_counter()
            written = write_streamed_rows(dataset.iter_batches(batch_size=None, batch_format="numpy"), final,
                                          set(done), summary, progress=progress, total=len(todo))
            summary.loop_s = time.perf_counter() - loop_started
        missing = len(set(todo) - written)
        if missing:
            log(f"{missing} files got no row (the cluster gave up on them); run the command again to score them")
    return finish_summary(summary, final, thumb_dir, paths, todo, started)


def write_streamed_rows(batches: Iterator[dict[str, np.ndarray]], final, done: set[str], summary: ScoreSummary,
                        *, progress: bool, total: int) -> set[str]:
    """Append each streamed batch's rows for files not yet written (a retried batch may come back twice);
    return the paths written. decode_ms / model_ms in the summary are summed from the rows."""
    from tqdm import tqdm

    written: set[str] = set()
    with tqdm(total=total, unit="file", dynamic_ncols=True, desc="scoring on ray", disable=not progress) as bar:
        for batch in batches:
            rows, records = [], []
            for path, row, record in zip(batch["path"], batch["row"], batch["record"]):
                if path in done or path in written:
                    continue
                written.add(path)
                rows.append(json.loads(row))
                records.append(json.loads(record))
            final.append(rows, records)
            for row in rows:
                summary.decode_ms += float(row[-2] or 0)
                summary.model_ms += float(row[-1] or 0)
            bar.update(len(rows))
    return written



# ----------------------------------------------------------------------------------------------------
# Preprocessing: one Ray task per scan


def preprocess_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ray task: pickled `preprocess_scan` arguments -> statuses ("ok" / "error: <step>: <reason>")."""
    import SimpleITK as sitk
    from adafocus.datasets.mri import preprocess

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the task holds one CPU
    statuses = [preprocess.preprocess_scan(*pickle.loads(job)) for job in batch["job"]]
    return {"index": batch["index"], "status": np.array(statuses, dtype=object)}


def ray_scan_executor(address: str | None, num_cpus: int | None = None):
    """A `ScanExecutor` (datasets/mri/preprocess.py) that runs the scans as Ray tasks on `address` (or on a Ray
    instance started here). A scan whose worker died more than MAX_RETRIES times is recorded as crashed."""
    from adafocus.datasets.mri.manifest import error_status

    def run(jobs: dict[int, tuple], workers: int) -> Iterator[tuple[int, str]]:
        if not jobs:
            return
        import ray.data

        with ray_session(address, num_cpus, preserve_order=False), bounded_retries():
            dataset = (ray.data.from_items([{"index": i, "job": pickle.dumps(job)} for i, job in jobs.items()],
                                           override_num_blocks=len(jobs))
                       .map_batches(preprocess_batch, batch_size=1, num_cpus=1, max_retries=MAX_RETRIES))
            finished = set()
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, status in zip(batch["index"], batch["status"]):
                    finished.add(int(index))
                    yield int(index), str(status)
        for index in jobs.keys() - finished:
            yield index, error_status(f"worker crashed {MAX_RETRIES + 1} times on this scan")

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
