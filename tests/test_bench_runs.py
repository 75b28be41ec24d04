"""maskst-bench --from-json A --from-json B: saved reports side by side (maskst/bench/runs.py), from the reports kept in
bench/results (written by real runs; nothing is benchmarked here)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.bench.cli import bench_main
from maskst.bench.runs import MET, NO_GOAL, NOT_MET, RunSummary, draw_runs_chart, format_runs_table, short_labels, summarize

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
ZEN4 = RESULTS / "full-256-steps10-zen4-session13-all-backends-rounds2.json"  # this version's report, every target
AMX = RESULTS / "full-256-steps10-2026-12-02.json"  # an AMX Xeon: the 6x goal
# a Xeon with AMX hidden, written when every machine was held to 6x: its saved target says "6x, NOT met"
NO_AMX = RESULTS / "full-256-steps10-noamx-avx512bf16.json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def _colour(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def _pixels(path: Path, hex_colour: str) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return int(np.all(pixels == _colour(hex_colour), axis=-1).sum())


def test_a_current_report_reads_as_its_own_targets():
    report = _load(ZEN4)
    run = summarize(ZEN4.stem, report)
    saved = report["targets"]
    assert (run.best, run.speedup) == (saved["end_to_end_speedup_at_least_3x"]["backend"],
                                       saved["end_to_end_speedup_at_least_3x"]["speedup"])
    assert (run.goal, run.machine_class, run.speedup_met) == (3.0, "AVX-512 BF16 / VNNI without AMX", True)
    unet = saved["unet_step_at_least_70pct_of_ceiling"]
    assert (run.unet_backend, run.unet_precision, run.unet_pct) == (unet["backend"], unet["precision"], unet["pct"])
    assert run.unet_met is unet["met"] is False  # 68.1%
    assert run.deepcache_speedup == saved["deepcache_speedup_at_least_1.8x"]["speedup"] and run.deepcache_met
    rss = report["peak_rss_mib"]
    assert run.rss_reference_mib == rss["reference"]
    assert run.rss_mib == max(v for n, v in rss.items() if n != "reference") and run.rss_backend == "openvino-f32"
    assert run.rss_met is True and run.machine == "AMD EPYC, 2 cores" and run.created == report["created"]


def test_an_old_report_is_judged_by_todays_goal_for_its_cpu_kind():
    report = _load(NO_AMX)
    assert report["targets"]["end_to_end_speedup_at_least_6x"]["met"] is False  # as saved
    run = summarize(NO_AMX.stem, report)
    assert (run.goal, run.machine_class, run.speedup_met) == (3.0, "AVX-512 BF16 / VNNI without AMX", True)
    assert run.speedup == pytest.approx(3.6307, abs=1e-4)
    amx = summarize(AMX.stem, _load(AMX))
    assert (amx.goal, amx.machine_class, amx.speedup_met) == (6.0, "AMX", True)


def test_a_figure_just_under_its_goal_never_reads_as_the_goal():
    run = summarize(NO_AMX.stem, _load(NO_AMX))
    assert 1.795 < run.deepcache_speedup < 1.8 and run.deepcache_met is False
    assert run.deepcache_text == "1.79x"  # rounded to 2 decimals it would read 1.80x, the goal it misses
    zen4 = summarize(ZEN4.stem, _load(ZEN4))
    assert zen4.speedup_text == "4.36x openvino-int8"  # elsewhere: ordinary rounding (4.359)
    assert zen4.unet_text == "68.1% int8"


def test_missing_figures_are_dashes_not_guesses():
    report = copy.deepcopy(_load(ZEN4))
    for key in ("end_to_end_ms", "stages_ms", "peak_rss_mib", "masking_projection_ms"):
        report[key].pop("reference", None)
    report["speedup_vs_reference"] = {}
    report["graph_efficiency"] = {}
    report["deepcache_speedup_vs_full"] = {}
    report["machine"] = {"isa_flags": ["avx2"]}  # a CPU kind the issue sets no goal for
    run = summarize("bare", report)
    assert (run.speedup, run.unet_pct, run.deepcache_speedup, run.rss_reference_mib, run.goal) == (None,) * 5
    assert (run.speedup_met, run.unet_met, run.deepcache_met, run.rss_met) == (None,) * 4
    table = format_runs_table([run])
    row = table.splitlines()[2]
    assert row.startswith("| bare |") and row.endswith("| no AVX-512 BF16 or AMX: none | - | - | - | - |")
    assert "end to end: no run judged" in table and "peak RSS: no run judged" in table


def test_the_table_has_a_row_per_run_and_counts_each_target():
    runs = [summarize(p.stem, _load(p)) for p in (ZEN4, AMX, NO_AMX)]
    lines = format_runs_table(runs).splitlines()
    assert [line.split(" | ")[0] for line in lines[2:5]] == [f"| {p.stem}" for p in (ZEN4, AMX, NO_AMX)]
    assert "7.10x openvino-int8 (met)" in lines[3] and "AMX: 6x" in lines[3]
    assert "30.0% int8, openvino-int8 (NOT met)" in lines[3]
    assert lines[-1].startswith("end to end: met in 3 of 3 runs; UNet % of ceiling: met in 0 of 3 runs; "
                                "DeepCache: met in 2 of 3 runs; peak RSS: met in 3 of 3 runs")


def test_short_labels_drop_the_common_prefix_at_a_word_boundary():
    assert short_labels(["full-256-zen4-a", "full-256-zen4-b"]) == ("full-256-zen4-", ["a", "b"])
    assert short_labels(["run_10", "run_11"]) == ("run_", ["10", "11"])  # not "run_1"
    assert short_labels(["only-one"]) == ("", ["only-one"])
    assert short_labels(["abc", "xyz"]) == ("", ["abc", "xyz"])


def test_the_chart_colours_each_run_by_its_verdict(tmp_path):
    runs = [summarize(p.stem, _load(p)) for p in (ZEN4, NO_AMX)]
    out = tmp_path / "runs.png"
    draw_runs_chart(runs, out)
    assert Image.open(out).format == "PNG"
    # met: both speedups, the Zen 4 DeepCache; not met: both UNets, the Xeon's DeepCache (1.798x)
    assert _pixels(out, MET) > 3 * 2000 and _pixels(out, NOT_MET) > 3 * 2000 and _pixels(out, NO_GOAL) == 0
    everything_met = [RunSummary(**{**vars(r), "unet_pct": 75.0, "deepcache_speedup": 2.0}) for r in runs]
    draw_runs_chart(everything_met, out)
    assert _pixels(out, NOT_MET) == 0 and _pixels(out, MET) > 6 * 2000


def test_from_json_twice_prints_the_runs_and_charts_them(tmp_path):
    out = tmp_path / "runs.png"
    result = CliRunner().invoke(bench_main, ["--from-json", str(ZEN4), "--from-json", str(AMX), "--plot", str(out)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    runs = [summarize(p.stem, _load(p)) for p in (ZEN4, AMX)]
    assert result.output.startswith(format_runs_table(runs))
    assert f"wrote {out}" in result.output and out.stat().st_size > 10_000


def test_from_json_twice_refuses_a_bad_report_before_any_output(tmp_path):
    chart = tmp_path / "runs.png"
    chart.write_bytes(b"the previous chart")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {}}))
    result = CliRunner().invoke(bench_main, ["--from-json", str(ZEN4), "--from-json", str(other), "--plot", str(chart)])
    assert result.exit_code == 2 and f"--from-json {other}: not a maskst-bench report" in result.output
    assert "| run |" not in result.output and chart.read_bytes() == b"the previous chart"
    result = CliRunner().invoke(bench_main, ["--from-json", str(ZEN4), "--from-json", str(AMX), "--steps", "3"])
    assert result.exit_code == 2 and "runs nothing: drop --steps" in result.output
