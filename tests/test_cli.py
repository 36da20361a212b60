"""The `adafocus` command line as a user runs it: flops, train -> calibrate on the synthetic task, errors."""
import json

import pytest
from adafocus.apps.cli import main
from adafocus.core.run import RunFolder


def test_bench_flops_json_reports_measured_exit_costs(capsys):
    assert main(["bench", "flops", "--preset", "paper-mbv2-r50", "--num-classes", "200", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["exits"][-1] == pytest.approx(27.2, rel=0.02)
    assert report["exits"] == sorted(report["exits"]) and len(report["exits"]) == 17
    assert set(report["components"]) >= {"glance_encoder", "spatial_policy", "temporal_policy"}


def test_train_then_calibrate_on_the_synthetic_task(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", "synthetic", "--preset", "cpu-synthetic", "--out", str(run), "--epochs", "1",
                 "--quiet", "--device", "cpu"]) == 0
    assert (run / "best.pt").is_file() and (run / "log.tsv").is_file()
    capsys.readouterr()
    assert main(["bench", "flops", "--preset", "cpu-synthetic", "--json"]) == 0
    exits = json.loads(capsys.readouterr().out)["exits"]
    budget = (exits[0] + exits[-1]) / 2
    assert main(["calibrate", "--model", str(run / "best.pt"), "--budget", str(budget), "--device", "cpu"]) == 0
    policy = json.loads(RunFolder(run).exit_policy(budget).read_text(encoding="utf-8"))
    assert policy["budget"] == pytest.approx(budget) and policy["calibration_cost"] <= budget * 1.001


def test_user_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["calibrate", "--model", str(tmp_path / "missing.pt"), "--budget", "1"]) == 2
    err = capsys.readouterr().err
    assert "no run folder or model" in err and "Traceback" not in err
    assert main(["demo", "--parts", "nonsense", "--out", str(tmp_path)]) == 2
    assert "unknown demo part" in capsys.readouterr().err
