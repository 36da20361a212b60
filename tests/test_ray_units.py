"""The pure parts of the Ray path (no Ray instance started; the cluster tests are in test_ray.py)."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from adafocus.apps.scoring.outputs import OutputFiles, csv_columns, prepare_csv, read_rows
from adafocus.apps.scoring.ray import (
    Completion,
    model_actor_resources,
    ray_init_kwargs,
    run_to_completion,
    stream_pass,
    write_streamed_rows,
)
from adafocus.apps.scoring.videos import ScoreSummary


def test_local_ray_listens_on_loopback_without_dashboard_and_installs_the_shim_in_workers():
    local = ray_init_kwargs(None, num_cpus=2)
    assert local["num_cpus"] == 2 and local["_node_ip_address"] == "127.0.0.1" and not local["include_dashboard"]
    assert local["runtime_env"]["worker_process_setup_hook"] == "adafocus.apps.scoring.ray.worker_setup"
    assert local["runtime_env"]["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    joined = ray_init_kwargs("10.0.0.5:6379")
    assert joined["address"] == "10.0.0.5:6379" and "num_cpus" not in joined
    assert ray_init_kwargs("local") == ray_init_kwargs(None)
    # a private instance whatever cluster the machine registered (Ray joins that one when given no address);
    # "auto" joins the registered one
    assert local["address"] == "local" and ray_init_kwargs("auto")["address"] == "auto"


def test_model_actors_one_per_gpu_else_half_the_cores():
    gpu = model_actor_resources({"CPU": 32.0, "GPU": 4.0}, "auto")
    assert gpu["num_gpus"] == 1 and gpu["concurrency"] == (1, 4) and gpu["device"] == "cuda"
    assert model_actor_resources({"CPU": 32.0, "GPU": 4.0}, "cpu")["num_gpus"] == 0
    small = model_actor_resources({"CPU": 2.0}, "auto")
    assert small == {"num_gpus": 0, "num_cpus": 1, "concurrency": (1, 1), "threads": 1, "device": "cpu",
                     "decode_cpus": 1}
    # one CPU left (the other nodes lost): the actor and the decode tasks share it instead of waiting forever
    one = model_actor_resources({"CPU": 1.0}, "auto")
    assert one["num_cpus"] + one["decode_cpus"] <= 1 and one["concurrency"] == (1, 1)
    big = model_actor_resources({"CPU": 64.0}, "auto")
    assert big["threads"] == 4 and big["concurrency"] == (1, 8)  # 8 actors x 4 threads = half of 64 cores
    with pytest.raises(ValueError, match="no GPU"):
        model_actor_resources({"CPU": 8.0}, "cuda")


def _batch(paths: list[str]) -> dict[str, np.ndarray]:
    rows = [[p, "ok", "", "", "a", "0.6", "0.4", 1, "0.01", "2.0", "3.0"] for p in paths]
    return {"path": np.array(paths, dtype=object), "row": np.array([json.dumps(r) for r in rows], dtype=object),
            "record": np.array([json.dumps({"path": p}) for p in paths], dtype=object)}


def test_streamed_rows_are_written_once_even_when_a_retried_batch_comes_back_twice(tmp_path):
    columns = csv_columns(["a", "b"])
    final = OutputFiles(tmp_path / "scores.csv", tmp_path / "details.jsonl")
    prepare_csv(final.csv, columns)
    summary = ScoreSummary(files=5)
    batches = [_batch(["/v/0.mp4", "/v/1.mp4"]), _batch(["/v/1.mp4", "/v/2.mp4"]), _batch(["/v/0.mp4", "/v/3.mp4"])]
    written = write_streamed_rows(iter(batches), final, {"/v/3.mp4"}, summary, progress=False, total=3)
    assert written == {"/v/0.mp4", "/v/1.mp4", "/v/2.mp4"}  # /v/3.mp4 was done before this run
    header, rows = read_rows(final.csv)
    assert header == columns and [r["path"] for r in rows] == ["/v/0.mp4", "/v/1.mp4", "/v/2.mp4"]
    assert [json.loads(line)["path"] for line in final.details.read_text().splitlines()] == \
        ["/v/0.mp4", "/v/1.mp4", "/v/2.mp4"]
    assert summary.decode_ms == 6.0 and summary.model_ms == 9.0


def test_ray_errors_become_one_line():
    from adafocus.apps.scoring.ray import one_line

    error = RuntimeError("\n  ray::MapWorker failed\nTraceback (most recent call last):\n  File ...\n")
    assert one_line(error) == "RuntimeError: ray::MapWorker failed"
    assert one_line(ValueError("")) == "ValueError: "


class FakeDataset:
    """Stands in for a Ray Data dataset: yields `batches`, then ends, raises `error`, or blocks (until
    `release` is set) like a pipeline waiting on a dead node."""

    def __init__(self, batches, *, error: Exception | None = None, block: bool = False):
        self.batches, self.error, self.block = batches, error, block
        self.release = threading.Event()

    def iter_batches(self, **_):
        yield from self.batches
        if self.error is not None:
            raise self.error
        if self.block:
            self.release.wait(30)


def _paths(*names: str) -> dict[str, np.ndarray]:
    return {"path": np.array(names, dtype=object)}


def _keys(batch):
    return list(batch["path"])


def test_a_pass_that_waits_on_a_lost_node_is_abandoned_after_a_bounded_wait():
    dataset = FakeDataset([_paths("a")], block=True)
    views = iter([{"n1", "n2", "n3"}, {"n1", "n2", "n3"}])
    done: set = set()
    started = time.monotonic()
    outcome = yield_all(stream_pass(dataset, _keys, done, node_loss_stall_s=1.0, stall_s=60.0, poll_s=0.1,
                                    nodes=lambda: next(views, {"n1", "n2"})))
    dataset.release.set()
    assert outcome.how == "stalled" and outcome.nodes_lost == 1 and "1 node(s) were lost" in outcome.reason
    assert done == {"a"} and time.monotonic() - started < 10


def test_a_pass_that_waits_with_every_node_alive_is_abandoned_after_stall_s():
    dataset = FakeDataset([], block=True)
    outcome = yield_all(stream_pass(dataset, _keys, set(), node_loss_stall_s=60.0, stall_s=1.0, poll_s=0.1,
                                    nodes=lambda: {"n1"}))
    dataset.release.set()
    assert outcome.how == "stalled" and outcome.nodes_lost == 0


def test_a_pass_that_raises_ends_with_the_error_in_one_line():
    outcome = yield_all(stream_pass(FakeDataset([_paths("a")], error=RuntimeError("boom\ntraceback")), _keys,
                                    set(), node_loss_stall_s=1.0, stall_s=1.0, nodes=lambda: {"n1"}))
    assert outcome.how == "error" and outcome.reason == "RuntimeError: boom"


def yield_all(generator):
    """Run a generator to its end; its return value."""
    while True:
        try:
            next(generator)
        except StopIteration as stop:
            return stop.value


def test_later_passes_get_only_the_jobs_still_without_a_result_and_stop_when_none_is_left():
    submitted = []
    plans = [  # pass 1 loses c and d (a lost block), pass 2 brings d and a duplicate of b, pass 3 brings c
        lambda left: FakeDataset([_paths("a", "b")]),
        lambda left: FakeDataset([_paths("d"), _paths("b")], error=RuntimeError("node died")),
        lambda left: FakeDataset([_paths("c")]),
    ]

    def build(left, number):
        submitted.append((number, left))
        return plans[number - 1](left)

    logged, completion = [], Completion()
    seen = [b for batch in run_to_completion(["a", "b", "c", "d"], build, _keys, completion, attempts=5,
                                             log=logged.append, nodes=lambda: {"n1"})
            for b in _keys(batch)]
    assert submitted == [(1, ["a", "b", "c", "d"]), (2, ["c", "d"]), (3, ["c"])]
    assert completion.done == {"a", "b", "c", "d"} and seen == ["a", "b", "d", "b", "c"]  # the caller dedups
    assert [p.how for p in completion.passes] == ["done", "error", "done"]
    assert "2 files still without a result after pass 1" in logged[0] and "(pass 2 of 5)" in logged[0]


def test_passes_are_bounded_and_say_how_each_ended():
    completion = Completion()
    list(run_to_completion(["a", "b"], lambda left, n: FakeDataset([_paths("a")]), _keys, completion,
                           attempts=2, log=lambda _: None, nodes=lambda: {"n1"}))
    assert completion.done == {"a"} and len(completion.passes) == 2
    assert completion.why() == "pass 1: done; pass 2: done"
