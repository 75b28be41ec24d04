"""maskst-bench --plot / --from-json: the chart of a report and the table of a saved one (no benchmark runs here:
the whole-CLI run with --plot is in the slow tier, tests/test_bench.py)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from maskst.bench.bench import format_table
from maskst.bench.chart import draw_bench_chart, efficiency_rows, stage_split
from maskst.bench.cli import bench_main

pytest.importorskip("matplotlib")

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"
# a full-size report of this version: reference, openvino-int8 and its DeepCache contender, ceilings measured
SAVED = RESULTS / "full-256-steps10-zen4-session12-deepcache-rounds2.json"
REFERENCE_GREY = (0x99, 0x99, 0x99)  # the reference's bars in the % and memory panels


@pytest.fixture()
def report() -> dict:
    return json.loads(SAVED.read_text())


def _pixels(path: Path, colour: tuple[int, int, int]) -> int:
    """How many pixels of the chart have exactly this colour (a bar has thousands; anti-aliased text a few)."""
    pixels = np.asarray(Image.open(path).convert("RGB"))
    return int(np.all(pixels == np.array(colour, dtype=np.uint8), axis=-1).sum())


def test_stage_split_adds_up_to_the_end_to_end(report):
    for name, total in report["end_to_end_ms"].items():
        encoders, loop, decode = stage_split(report, name)
        stages = report["stages_ms"][name]
        assert encoders == pytest.approx(stages["text_encoder"] + stages["image_encoder"] + stages["content_encoder"]
                                         + stages["image_conditioner"])
        assert decode == stages["vae_decoder"]
        assert encoders + loop + decode == pytest.approx(total)
        assert loop > stages["unet_step"]  # the loop holds every step's UNet call
    assert stage_split(report, "not-a-contender") is None


def test_efficiency_rows_are_every_measured_graph(report):
    rows = efficiency_rows(report)
    expected = sum(1 for graphs in report["graph_efficiency"].values() for entries in graphs.values()
                   for e in entries if "pct_of_ceiling" in e)
    assert len(rows) == expected > 0
    unet = [pct for graph, name, pct in rows if graph == "unet" and name == "openvino-int8"]
    assert unet == [report["targets"]["unet_step_at_least_70pct_of_ceiling"]["pct"]]


def test_chart_draws_every_panel(report, tmp_path):
    out = tmp_path / "bench.png"
    draw_bench_chart(report, out)
    image = Image.open(out)
    assert image.format == "PNG" and image.width == 17 * 110  # figsize 17 in at save_figure's 110 dpi
    assert _pixels(out, REFERENCE_GREY) > 2000  # the reference's bars
    assert _pixels(out, (0x4C, 0x72, 0xB0)) > 2000 and _pixels(out, (0xDD, 0x84, 0x52)) > 500  # loop, VAE decode


def test_chart_of_a_report_without_reference_ceilings_or_a_contender(report, tmp_path):
    """No reference, no ceilings and a failed contender: the panels say what is missing and the chart is drawn."""
    partial = copy.deepcopy(report)
    for key in ("end_to_end_ms", "stages_ms", "peak_rss_mib", "speedup_vs_reference"):
        partial[key].pop("reference", None)
    partial["graph_efficiency"] = {}
    partial["end_to_end_ms"].pop("openvino-int8+deepcache3")
    partial["errors"] = {"openvino-int8+deepcache3": "worker exited with code 1"}
    out = tmp_path / "partial.png"
    draw_bench_chart(partial, out)
    assert _pixels(out, REFERENCE_GREY) < 200  # no reference bars


def test_from_json_prints_the_saved_table_and_draws(report, tmp_path):
    out = tmp_path / "chart.png"
    result = CliRunner().invoke(bench_main, ["--from-json", str(SAVED), "--plot", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(format_table(report))
    assert f"wrote {out}" in result.output and out.stat().st_size > 10_000


@pytest.mark.parametrize("args, message", [
    (["--plot", "{tmp}/chart.jpg"], "the chart is written as PNG; give a .png name, e.g. {tmp}/chart.png"),
    (["--steps", "3"], "runs nothing: drop --steps"),
    (["--engines", "{tmp}", "--backends", "ort-cpu"], "drop --engines, --backends"),
])
def test_from_json_refusals(args, message, tmp_path):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = CliRunner().invoke(bench_main, ["--from-json", str(SAVED), *args])
    assert result.exit_code == 2 and message.replace("{tmp}", str(tmp_path)) in result.output, result.output


def test_from_json_refuses_what_is_not_a_report_and_keeps_the_old_chart(tmp_path):
    chart = tmp_path / "chart.png"
    chart.write_bytes(b"the previous chart")
    broken = tmp_path / "broken.json"
    broken.write_text('{"settings": ')
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"settings": {}, "summary": {}}))
    runner = CliRunner()
    result = runner.invoke(bench_main, ["--from-json", str(broken), "--plot", str(chart)])
    assert result.exit_code == 2 and "not a readable JSON file" in result.output
    result = runner.invoke(bench_main, ["--from-json", str(other), "--plot", str(chart)])
    assert result.exit_code == 2 and "not a maskst-bench report this version reads (no machine, stages_ms" \
        in result.output
    assert chart.read_bytes() == b"the previous chart"
    result = runner.invoke(bench_main, ["--from-json", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "does not exist" in result.output
