"""Results as data: every number the README or docs quote is a JSON file under docs/results/, written by the
command that measured it, and `adafocus report results` renders them all into docs/results.md.

A result file is one JSON object:

    {"name": "demo", "title": "...", "command": "adafocus demo ...", "commit": "abc1234", "date": "2026-...",
     "machine": {"cpu": "...", "cpu_flags": ["avx2", "avx512_bf16", ...], "threads": 2, "cores": 2},
     "summary": {metric: value, ...},          # one table of headline numbers
     "tables": {"title": [{column: value}, ...]},   # optional row tables
     "plots": [{"title", "x", "y", "table", "series"?}]}   # optional: an x-y plot from one of the tables

`save_result` adds the commit, date and machine so that no command writes them by hand.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from adafocus.core.io import atomic_write_json, atomic_write_text

# The CPU features that decide which precision and kernels a machine can use (recorded with every result).
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
DEFAULT_RESULTS_DIR = Path("docs/results")
RESULTS_PAGE = "results.md"


# ------------------------------------------------------------------------------------------------ machine
def cpu_model_and_flags(cpuinfo: str) -> tuple[str, list[str]]:
    """(model name, the RELEVANT_FLAGS it has) from the text of /proc/cpuinfo."""
    model, flags = "unknown", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, [flag for flag in RELEVANT_FLAGS if flag in flags]


def machine_record() -> dict[str, Any]:
    import torch

    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        text = ""
    cpu, flags = cpu_model_and_flags(text)
    return {"cpu": cpu, "cpu_flags": flags, "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def current_commit(folder: Path | None = None) -> str:
    """The checkout's commit (with "+changes" when the tree differs from it), or "unknown"."""
    folder = folder or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+changes" if dirty else "")


# ---------------------------------------------------------------------------------------------- writing
def save_result(name: str, command: str, summary: dict[str, Any], *, title: str | None = None,
                tables: dict[str, list[dict[str, Any]]] | None = None, plots: list[dict[str, Any]] | None = None,
                results_dir: str | Path = DEFAULT_RESULTS_DIR) -> Path:
    """Write results_dir/<name>.json (atomically) with the commit, date and machine added."""
    if not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"a result name is letters, digits, - and _, got {name!r}")
    record = {"name": name, "title": title or name, "command": command, "commit": current_commit(),
              "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine_record(),
              "summary": summary, "tables": tables or {}, "plots": plots or []}
    path = Path(results_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, record)
    return path


def flatten_numbers(data: dict[str, Any], prefix: str = "", max_depth: int = 4) -> dict[str, Any]:
    """{"a": {"b": 0.5, "c": "x"}} -> {"a.b": 0.5}: the numeric leaves of nested results, for a summary
    table (lists of numbers are kept as lists; strings, paths and deeper levels are left out)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        short_list = (isinstance(value, list) and 0 < len(value) <= 8
                      and all(isinstance(v, (int, float)) for v in value))
        if isinstance(value, (bool, int, float)) or short_list:
            flat[name] = value
        elif isinstance(value, dict) and max_depth > 1:
            flat.update(flatten_numbers(value, f"{name}.", max_depth - 1))
    return flat


# -------------------------------------------------------------------------------------------- rendering
def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows)\n"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def render_plot(plot: dict[str, Any], rows: list[dict[str, Any]], target: Path) -> Path:
    """One x-y line plot (a line per value of plot["series"] when given) of a result table, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(str(row.get(plot["series"], "")) if plot.get("series") else "", []).append(row)
    for label, group in groups.items():
        points = sorted((float(r[plot["x"]]), float(r[plot["y"]])) for r in group
                        if r.get(plot["x"]) is not None and r.get(plot["y"]) is not None)
        if points:
            axes.plot(*zip(*points), marker="o", label=label or None)
    axes.set_xlabel(plot["x"])
    axes.set_ylabel(plot["y"])
    axes.set_title(plot.get("title", ""))
    axes.grid(alpha=0.3)
    if len(groups) > 1:
        axes.legend(fontsize=8)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp.png")
    figure.savefig(tmp)
    plt.close(figure)
    os.replace(tmp, target)
    return target


def read_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every result file of the folder, sorted by name; a file that is not a result is a one-line error."""
    results = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error})") from None
        if not isinstance(record, dict) or not {"name", "command", "summary"} <= set(record):
            raise ValueError(f"{path} is not a result file (needs name, command and summary; see "
                             "adafocus.reports.results)")
        results.append(record)
    return results


def results_markdown(results: list[dict[str, Any]], plot_paths: dict[tuple[str, int], str]) -> str:
    lines = ["# Results", "",
             ("Generated by `adafocus report results` from `docs/results/*.json`; each section names the command "
              "that measured it, the commit and the machine. Do not edit by hand."), ""]
    for record in results:
        machine = record.get("machine", {})
        lines += [f"## {record.get('title', record['name'])}", "",
                  f"- command: `{record['command']}`",
                  (f"- commit {record.get('commit', '?')}, {record.get('date', '?')}; {machine.get('cpu', '?')}, "
                   f"flags {', '.join(machine.get('cpu_flags', [])) or 'none of ' + '/'.join(RELEVANT_FLAGS)}, "
                   f"{machine.get('threads', '?')} threads"),
                  f"- data: `{record['name']}.json`", ""]
        summary = record.get("summary") or {}
        if summary:
            lines.append(markdown_table([{"measure": key, "value": value} for key, value in summary.items()]))
        for table_title, rows in (record.get("tables") or {}).items():
            lines += [f"**{table_title}**", "", markdown_table(rows)]
        for index, _ in enumerate(record.get("plots") or []):
            if (record["name"], index) in plot_paths:
                lines += [f"![{record['name']} plot {index}]({plot_paths[(record['name'], index)]})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_results_page(results_dir: Path, out_dir: Path) -> Path:
    """Render out_dir/results.md (and out_dir/results/plots/*.png) from results_dir/*.json."""
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no results folder at {results_dir}; commands write their results there")
    results = read_results(results_dir)
    page = out_dir / RESULTS_PAGE
    plot_paths: dict[tuple[str, int], str] = {}
    for record in results:
        for index, plot in enumerate(record.get("plots") or []):
            rows = (record.get("tables") or {}).get(plot.get("table", ""), [])
            if not rows:
                continue
            target = results_dir / "plots" / f"{record['name']}-{index}.png"
            render_plot(plot, rows, target)
            plot_paths[(record["name"], index)] = os.path.relpath(target, page.parent)
    atomic_write_text(page, results_markdown(results, plot_paths))
    return page
