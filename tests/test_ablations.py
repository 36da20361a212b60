"""`adafocus bench ablations` on a tiny setting: every row is trained, evaluated and written; reruns resume."""
import json

import pytest
from adafocus.apps.bench.ablations import TABLES, run_ablations, table_rows, variants
from adafocus.apps.cli import main
from adafocus.core.config import get_preset


def test_every_table_row_has_a_variant_that_builds_a_valid_preset():
    base = get_preset("cpu-synthetic")
    known = variants(base)
    for rows in table_rows(base).values():
        for _, key in rows:
            known[key](base)  # ModelConfig validation runs in replace()


def test_versions_table_quick_run_writes_report_and_resumes(tmp_path):
    messages = []
    report = run_ablations(tmp_path, quick=True, tables=("versions",), log=messages.append)
    rows = report["tables"]["versions"]
    assert [r["key"] for r in rows] == ["v1", "v2", "uni"]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows)
    # V2 and Uni process the same number of P x P patches: their last-exit costs differ only by the policies.
    assert rows[1]["exit_costs"][-1] == pytest.approx(rows[2]["exit_costs"][-1], rel=0.1)
    text = (tmp_path / "ablations.md").read_text(encoding="utf-8")
    assert "AdaFocusV1 (3 stages, PPO)" in text and (tmp_path / "ablations_versions.png").stat().st_size > 0
    assert json.loads((tmp_path / "ablations.json").read_text(encoding="utf-8"))["quick"] is True
    trained = [m for m in messages if m.startswith("[")]
    assert len(trained) == 3
    messages.clear()
    run_ablations(tmp_path, quick=True, tables=("versions",), log=messages.append)
    assert not [m for m in messages if m.startswith("[")]  # finished rows are reused


@pytest.mark.slow
def test_all_tables_quick_run_through_the_cli(tmp_path, capsys):
    assert main(["bench", "ablations", "--out", str(tmp_path), "--quick", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "ablations.json").read_text(encoding="utf-8"))
    assert set(report["tables"]) == set(TABLES)
    curve = report["tables"]["X"][-1]["budget_curve"]
    assert len(curve) == 4 and all(p["adaptive"] is not None for p in curve)
    assert "Table X" in capsys.readouterr().out
    assert all((tmp_path / f"ablations_{name}.png").exists() for name in TABLES)


def test_unknown_table_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tables"):
        run_ablations(tmp_path, quick=True, tables=("XI",))


def test_rows_restrict_the_run_and_the_report(tmp_path, capsys):
    assert main(["bench", "ablations", "--out", str(tmp_path), "--quick", "--device", "cpu",
                 "--rows", "ix_loc_center,x_spatial"]) == 0
    report = json.loads((tmp_path / "ablations.json").read_text(encoding="utf-8"))
    assert {name: [r["key"] for r in rows] for name, rows in report["tables"].items()} == \
        {"IX": ["ix_loc_center"], "X": ["x_spatial"]}
    assert "budget_curve" not in report["tables"]["X"][0]  # curves need all four Table X rows
    assert sorted(p.stem for p in (tmp_path / "rows").glob("*.json")) == ["ix_loc_center", "x_spatial"]
    assert "location: centre" in capsys.readouterr().out


def test_unknown_row_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unknown rows.*ix_loc_nowhere"):
        run_ablations(tmp_path, quick=True, rows=("ix_loc_nowhere",))
