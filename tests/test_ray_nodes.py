"""`score --ray ADDRESS` and `preprocess --ray ADDRESS` on a real multi-node cluster: a head and two worker
nodes, each a separate `ray start` process on 127.0.0.1 with one CPU (tests/_ray_cluster.py), the command run
as a user runs it (its own process). A worker node's raylet SIGKILLed from outside while batches are in
flight costs no file and duplicates none, within the same run; a pass that stalls is abandoned and the run
still finishes; `--ray` without an address starts a private instance whatever cluster the machine has
registered (marker `cluster`, `make test-cluster`)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster
pytest.importorskip("ray")  # the default suite collects this file without the `cluster` extra
pytest.importorskip("psutil")

sys.path.insert(0, str(Path(__file__).parent))
from _policy_fixtures import untrained_video_run
from _ray_cluster import LocalCluster, free_ports
from adafocus.apps.scoring.outputs import read_rows
from adafocus.apps.scoring.videos import score_videos
from test_ray import FAST, _assert_same_scores, _cohort, _details, _mixed_folder, _without_timing

ADAFOCUS = str(Path(sys.executable).with_name("adafocus"))
GOOD = 32  # + 4 broken files + 1 missing = 37 inputs


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_video_run(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> list[str]:
    return _mixed_folder(tmp_path_factory.mktemp("inputs") / "videos", good=GOOD)


@pytest.fixture(scope="module")
def local_rows(checkpoint, videos, tmp_path_factory) -> dict:
    """The local path's rows for the same files (the reference)."""
    out = tmp_path_factory.mktemp("local") / "scores.csv"
    summary = score_videos(videos, checkpoint, out, workers=0, batch_size=4, progress=False, log=lambda _: None)
    assert summary.scored == GOOD and summary.failed == 5
    return _without_timing(out)


@pytest.fixture(scope="module")
def cluster():
    nodes = LocalCluster(workers=2).start()
    try:
        yield nodes
    finally:
        nodes.stop()


def _run(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own handle
        return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait(process: subprocess.Popen, log: Path, timeout_s: float) -> str:
    """Wait for `process` (killing its process group past `timeout_s`); its output."""
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"still running after {timeout_s:.0f}s:\n{log.read_text(errors='replace')[-4000:]}")
    return log.read_text(errors="replace")


def _rows_written(path: Path) -> int:
    return max(0, len(path.read_text(encoding="utf-8").splitlines()) - 1) if path.exists() else 0


def test_preprocess_ray_on_a_cluster_gives_the_local_manifest(cluster, tmp_path):
    from adafocus.datasets.mri.manifest import read_manifest, write_manifest
    from adafocus.datasets.mri.preprocess import preprocess_manifest

    sys.path.insert(0, str(Path(__file__).parent))
    from _mri_fixtures import one_itk_thread

    rows = _cohort(tmp_path / "raw")
    write_manifest(rows, tmp_path / "input.tsv")
    with one_itk_thread():  # a Ray task holds one CPU and registers on one ITK thread: compare like with like
        local = preprocess_manifest(rows, tmp_path / "local", workers=1, progress=False, config=FAST)
    driver = textwrap.dedent(f"""
        import sys
        from adafocus.apps.scoring.ray import ray_scan_executor
        from adafocus.datasets.mri.manifest import read_manifest
        from adafocus.datasets.mri.preprocess import T1LinearConfig, preprocess_manifest
        config = T1LinearConfig(spacing_mm={FAST.spacing_mm}, registration_spacing_mm={FAST.registration_spacing_mm},
                                n4_shrink_factor={FAST.n4_shrink_factor})
        preprocess_manifest(read_manifest(sys.argv[1]), sys.argv[2], progress=False, config=config,
                            executor=ray_scan_executor(sys.argv[3]))
    """)
    log = tmp_path / "driver.log"
    process = _run([sys.executable, "-c", driver, str(tmp_path / "input.tsv"), str(tmp_path / "ray"),
                    cluster.address], cluster.env, log)
    output = _wait(process, log, 120)
    assert process.returncode == 0, output[-4000:]
    remote = read_manifest(tmp_path / "ray" / "manifest.tsv")
    assert [r.status for r in remote] == [r.status for r in local], output[-4000:]
    assert [r.status for r in local[:2]] == ["ok", "ok"] and local[2].is_error and local[3].is_error


def _start_with_the_model_on_a_worker(cluster, args, env, log: Path, outputs: list[Path], tries: int = 4):
    """Start the scoring run until Ray places its model actor on a worker node (it may pick the head, whose
    loss would end the cluster, not test it): a run whose actor went to the head is killed, outputs and all,
    before it wrote anything, and started afresh (its actor still holds the head's CPU for a moment, which
    steers the next one away). Returns the run, the node of its actor and the number of starts."""
    for attempt in range(tries):
        for path in outputs:
            path.unlink(missing_ok=True)
        driver = _run(args, env, log)
        deadline = time.monotonic() + 90
        while not (placed := cluster.nodes_running("MapWorker")):
            assert driver.poll() is None, f"the run ended before its model started:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "no model actor after 90s"
            time.sleep(0.1)
        if placed[0] is not cluster.nodes[0] or attempt == tries - 1:
            return driver, placed[0], attempt + 1
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    raise AssertionError("unreachable")


def test_score_ray_on_a_cluster_survives_a_worker_node_killed_mid_run(cluster, checkpoint, videos, local_rows,
                                                                       tmp_path):
    out, details, log = tmp_path / "scores.csv", tmp_path / "details.jsonl", tmp_path / "driver.log"
    args = [ADAFOCUS, "score", *videos, "--model", str(checkpoint), "--out", str(out), "--details", str(details),
            "--batch-size", "4", "--quiet", "--ray", cluster.address]
    started = time.monotonic()
    driver, actor_node, starts = _start_with_the_model_on_a_worker(cluster, args, cluster.env, log, [out, details])
    try:
        # once the first batch's rows are written, kill the model actor's worker node from outside, while the
        # other batches are in flight (decoded blocks in that node's object store, batches queued on the actor)
        while _rows_written(out) < 4:
            assert driver.poll() is None, f"the run ended before any node was killed:\n{log.read_text()[-4000:]}"
            assert time.monotonic() - started < 150, "no rows after 150s"
            time.sleep(0.1)
        victim = actor_node if actor_node is not cluster.nodes[0] else cluster.nodes[1]
        rows_at_kill = _rows_written(out)
        cluster.kill_raylet(victim)
        output = _wait(driver, log, 150)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    role = "the model actor's node" if victim is actor_node else "a worker node without the model"
    print(f"killed {victim.name}'s raylet ({role}) at {rows_at_kill} of {len(local_rows)} rows; "
          f"{starts} start(s); {time.monotonic() - started:.0f}s in all; "
          f"{[line for line in output.splitlines() if line.startswith('ray:')]}")
    assert driver.returncode == 0, output[-4000:]
    assert victim.raylet() is None and rows_at_kill < len(local_rows)
    paths = [r["path"] for r in read_rows(out)[1]]
    assert len(paths) == len(set(paths)) == len(local_rows)  # every file exactly once, with no resume
    _assert_same_scores(local_rows, _without_timing(out))
    assert _details(details).keys() == local_rows.keys()
    assert f"{GOOD} scored, 5 failed, 0 skipped" in output


def test_ray_without_an_address_starts_a_private_instance_despite_a_registered_cluster(cluster, checkpoint,
                                                                                      tmp_path):
    """The machine has a live cluster (the fixture's) and has registered a dead one (Ray's current-cluster
    file, left by a `ray start --head` whose processes died): `--ray` uses neither."""
    temp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live under it
    try:
        (temp / "ray").mkdir()
        (temp / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_ports(1)[0]}", encoding="utf-8")
        inputs = _mixed_folder(tmp_path / "videos", good=2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {
            "RAY_TMPDIR": str(temp), "RAY_USAGE_STATS_ENABLED": "0"}
        log = tmp_path / "driver.log"
        process = _run([ADAFOCUS, "score", *inputs, "--model", str(checkpoint), "--out", str(tmp_path / "s.csv"),
                        "--quiet", "--ray"], env, log)
        output = _wait(process, log, 150)
        assert process.returncode == 0 and "2 scored, 5 failed" in output, output[-4000:]
        assert "Started a local Ray instance" in output
    finally:
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


STALLING_DRIVER = """
import os, sys, time
from pathlib import Path
from adafocus.core._torchvision_compat import install_torchvision_shim
install_torchvision_shim()
from adafocus.apps.scoring.ray import ModelScorer, score_on_ray

MARKER = Path(sys.argv[3])


class HangsOnce(ModelScorer):
    # the first batch of the run never returns (as if waiting on a dead node's object); later ones do
    def __call__(self, batch):
        try:
            MARKER.touch(exist_ok=False)
        except FileExistsError:
            return super().__call__(batch)
        time.sleep(3600)


summary = score_on_ray([sys.argv[1]], sys.argv[2], sys.argv[4], batch_size=4, num_cpus=2, progress=False,
                       scorer=HangsOnce, stall_s=30.0)
print(summary.line())
"""


def test_a_stalled_pass_is_abandoned_and_the_run_still_finishes(checkpoint, tmp_path):
    inputs = _mixed_folder(tmp_path / "videos", good=6)
    log = tmp_path / "driver.log"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)} | {"RAY_USAGE_STATS_ENABLED": "0"}
    process = _run([sys.executable, "-c", STALLING_DRIVER, inputs[0], str(checkpoint), str(tmp_path / "hung"),
                    str(tmp_path / "scores.csv")], env, log)
    output = _wait(process, log, 180)
    assert process.returncode == 0, output[-4000:]
    assert "pass 1 (stalled: no result for" in output and "started a fresh Ray job" in output
    assert "6 scored, 4 failed, 0 skipped" in output
    paths = [r["path"] for r in read_rows(tmp_path / "scores.csv")[1]]
    assert len(paths) == len(set(paths)) == 10
