"""Results as data: the envelope every result file carries and the page rendered from them."""
import json

import pytest
from adafocus.apps.cli import main as cli_main
from adafocus.reports.results import cpu_model_and_flags, markdown_table, save_result

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 sha_ni
processor\t: 1
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse avx2
"""


def test_cpu_flags_keep_the_precision_relevant_ones_of_the_first_cpu():
    model, flags = cpu_model_and_flags(CPUINFO)
    assert model == "Intel(R) Xeon(R) Processor"
    assert flags == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert cpu_model_and_flags("") == ("unknown", [])


def test_a_saved_result_carries_commit_date_machine_and_renders_with_its_command(tmp_path):
    results = tmp_path / "results"
    path = save_result("speed", "adafocus bench speed --preset x", {"videos/s": 12.3456, "ratio": 2.0},
                       title="Speed", tables={"budgets": [{"gmacs": 1.0, "accuracy": 0.5},
                                                          {"gmacs": 2.0, "accuracy": 0.8}]},
                       plots=[{"title": "accuracy vs GMACs", "x": "gmacs", "y": "accuracy", "table": "budgets"}],
                       results_dir=results)
    record = json.loads(path.read_text())
    assert record["commit"] and record["date"] and record["machine"]["threads"] >= 1
    assert isinstance(record["machine"]["cpu_flags"], list)
    assert cli_main(["report", "results", "--results", str(results), "--out", str(tmp_path)]) == 0
    page = (tmp_path / "results.md").read_text()
    assert "## Speed" in page and "`adafocus bench speed --preset x`" in page and "12.35" in page
    assert "| 2 | 0.8 |" in page
    assert (results / "plots" / "speed-0.png").stat().st_size > 1000
    assert "](results/plots/speed-0.png)" in page


def test_a_file_that_is_not_a_result_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    assert cli_main(["report", "results", "--results", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is not a result file" in capsys.readouterr().err
    with pytest.raises(ValueError):
        save_result("../escape", "x", {}, results_dir=tmp_path)


def test_markdown_table_takes_the_union_of_columns_in_order():
    assert markdown_table([{"a": 1}, {"b": "x|y"}]) == "| a | b |\n|---|---|\n| 1 |  |\n|  | x\\|y |\n"


def test_flatten_numbers_keeps_numeric_leaves_with_their_path():
    from adafocus.reports.results import flatten_numbers

    nested = {"focus": {"policies": {"learned": {"accuracy": 1.0, "name": "x"}}, "costs": [0.1, 0.2]},
              "path": "/tmp/x", "ok": True}
    assert flatten_numbers(nested) == {"focus.policies.learned.accuracy": 1.0, "focus.costs": [0.1, 0.2],
                                       "ok": True}
