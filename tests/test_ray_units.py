"""The pure parts of the Ray path (no Ray instance started; the cluster tests are in test_ray.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from adafocus.apps.scoring.videos import ScoreSummary
from adafocus.apps.scoring.outputs import OutputFiles, csv_columns, prepare_csv, read_rows
from adafocus.apps.scoring.ray import model_actor_resources, ray_init_kwargs, write_streamed_rows


def test_local_ray_listens_on_loopback_without_dashboard_and_installs_the_shim_in_workers():
    local = ray_init_kwargs(None, num_cpus=2)
    assert local["num_cpus"] == 2 and local["_node_ip_address"] == "127.0.0.1" and not local["include_dashboard"]
    assert local["runtime_env"]["worker_process_setup_hook"] == "adafocus.apps.scoring.ray.worker_setup"
    assert local["runtime_env"]["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    joined = ray_init_kwargs("10.0.0.5:6379")
    assert joined["address"] == "10.0.0.5:6379" and "num_cpus" not in joined
    assert ray_init_kwargs("local") == ray_init_kwargs(None)


def test_model_actors_one_per_gpu_else_half_the_cores():
    gpu = model_actor_resources({"CPU": 32.0, "GPU": 4.0}, "auto")
    assert gpu["num_gpus"] == 1 and gpu["concurrency"] == (1, 4) and gpu["device"] == "cuda"
    assert model_actor_resources({"CPU": 32.0, "GPU": 4.0}, "cpu")["num_gpus"] == 0
    small = model_actor_resources({"CPU": 2.0}, "auto")
    assert small == {"num_gpus": 0, "num_cpus": 1, "concurrency": (1, 1), "threads": 1, "device": "cpu"}
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
