"""The maskst-bench chart (``--plot FILE.png``; matplotlib, Agg backend; ``pip install "maskst[bench]"``).

Three panels drawn from one report (:func:`maskst.bench.bench.run_bench`'s dict, or a ``--json`` file read back):

* end to end per contender, split into the encoders (text, image, content encoders and the conditioner), the
  denoising loop (the rest of the generation: every UNet / ControlNet call and the scheduler) and the VAE decode,
  each bar labelled with its speedup over the reference; a dashed line where the issue's end-to-end goal for this
  machine's kernels would put it (:func:`maskst.bench.bench.end_to_end_goal`);
* each graph's achieved GFLOP/s as % of the measured ceiling of the runtime and precision it ran in, per contender,
  with the 70% line (absent when the run measured no ceilings: ``--ceiling-repeats 0``);
* peak RSS per contender against the reference's.

Missing figures (no reference, a failed contender, a report from before a field existed) leave their panel or
bar out and say so; they never stop the chart.
"""

from __future__ import annotations

from pathlib import Path

from maskst.bench.bench import UNET_PCT_GOAL, end_to_end_goal, machine_name, split_contender
from maskst.contract.files import agg_pyplot, save_figure

ENCODER_STAGES = ("text_encoder", "image_encoder", "content_encoder", "image_conditioner")


def stage_split(report: dict, name: str) -> tuple[float, float, float] | None:
    """(encoders, denoising loop, VAE decode) in ms for contender ``name``: the encoders' and the decoder's median
    stage times, and the rest of the median end to end as the loop (None when the contender has no end to end)."""
    total = (report.get("end_to_end_ms") or {}).get(name)
    if total is None:
        return None
    stages = (report.get("stages_ms") or {}).get(name) or {}
    encoders = sum(stages.get(stage) or 0.0 for stage in ENCODER_STAGES)
    decode = stages.get("vae_decoder") or 0.0
    return encoders, max(total - encoders - decode, 0.0), decode


def efficiency_rows(report: dict) -> list[tuple[str, str, float]]:
    """(graph, contender, % of ceiling) for every graph call shape whose % of ceiling the run measured."""
    rows = []
    for name, graphs in (report.get("graph_efficiency") or {}).items():
        for graph, entries in graphs.items():
            for entry in entries:
                if "pct_of_ceiling" in entry:
                    label = graph if len(entries) == 1 else f"{graph} {entry.get('shapes', {}).get('sample', '')}"
                    rows.append((label, name, entry["pct_of_ceiling"]))
    return rows


def _legend_below(axis) -> None:
    # below the x label at a fixed distance in font sizes (a fraction of the axes would drift with the figure height)
    axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, 0.0), borderaxespad=4.8, ncol=2, frameon=False)


def _empty(axis, text: str) -> None:
    axis.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    axis.set_axis_off()


def _end_to_end(axis, report: dict, names: list[str]) -> None:
    split = {n: stage_split(report, n) for n in names}
    shown = [n for n in names if split[n] is not None]
    if not shown:
        _empty(axis, "no contender finished a generation")
        return
    y = list(range(len(shown)))[::-1]
    left = [0.0] * len(shown)
    for part, (label, color) in enumerate((("encoders", "#8172b3"), ("denoising loop", "#4c72b0"),
                                            ("VAE decode", "#dd8452"))):
        seconds = [split[n][part] / 1000 for n in shown]
        axis.barh(y, seconds, left=left, color=color, label=label, edgecolor="white")
        left = [a + b for a, b in zip(left, seconds)]
    speedups = report.get("speedup_vs_reference") or {}
    for row, name, total in zip(y, shown, left):
        text = "reference" if name == "reference" else (f"{speedups[name]:.2f}x" if name in speedups else "")
        axis.text(total, row, f" {text}", va="center", fontsize=8)
    axis.set_yticks(y, shown, fontsize=8)
    axis.set_xlabel("seconds per generation (median)")
    reference = (report.get("end_to_end_ms") or {}).get("reference")
    goal, machine_class = end_to_end_goal((report.get("machine") or {}).get("isa_flags"))
    if reference is not None and goal is not None:
        axis.axvline(reference / goal / 1000, color="gray", ls="--", lw=0.9,
                     label=f"goal {goal:g}x ({machine_class})")
    s = report.get("settings") or {}
    axis.set_title(f"end to end: {s.get('height')}x{s.get('width')}, {s.get('steps')} steps")
    axis.set_xlim(0, max(left) * 1.22)  # room for the speedup labels
    _legend_below(axis)


def _efficiency(axis, report: dict, names: list[str], colors: dict) -> None:
    rows = efficiency_rows(report)
    if not rows:
        _empty(axis, "no ceilings measured in this run\n(--ceiling-repeats 0, or an older report)")
        return
    graphs = list(dict.fromkeys(graph for graph, _, _ in rows))
    contenders = [n for n in names if any(name == n for _, name, _ in rows)]
    height = 0.8 / len(contenders)
    for k, name in enumerate(contenders):
        pct = {graph: value for graph, owner, value in rows if owner == name}
        y = [len(graphs) - 1 - i + 0.4 - (k + 0.5) * height for i, graph in enumerate(graphs) if graph in pct]
        values = [pct[g] for g in graphs if g in pct]
        axis.barh(y, values, height, color=colors[name], label=name)
        for row, value in zip(y, values):
            axis.text(value, row, f" {value:.0f}%", va="center", fontsize=6)
    axis.axvline(UNET_PCT_GOAL, color="gray", ls="--", lw=0.9, label=f"{UNET_PCT_GOAL:g}% (UNet goal)")
    axis.set_yticks(range(len(graphs))[::-1], graphs, fontsize=8)
    axis.set_xlabel("% of the measured ceiling of the precision it ran in")
    axis.set_title("achieved GFLOP/s per graph")
    axis.set_xlim(0, max(max(value for _, _, value in rows), UNET_PCT_GOAL) * 1.15)
    _legend_below(axis)


def _memory(axis, report: dict, names: list[str], colors: dict) -> None:
    rss = report.get("peak_rss_mib") or {}
    shown = [n for n in names if n in rss]
    if not shown:
        _empty(axis, "no peak RSS in this report")
        return
    y = list(range(len(shown)))[::-1]
    gib = [rss[n] / 1024 for n in shown]
    axis.barh(y, gib, color=[colors[n] for n in shown])
    for row, value in zip(y, gib):
        axis.text(value, row, f" {value:.2f}" if value < 10 else f" {value:.1f}", va="center", fontsize=8)
    axis.set_xlim(0, max(gib) * 1.15)
    if "reference" in rss:
        axis.axvline(rss["reference"] / 1024, color="gray", ls="--", lw=0.9, label="reference")
        _legend_below(axis)
    axis.set_yticks(y, shown, fontsize=8)
    axis.set_xlabel("peak RSS (GiB)")
    axis.set_title("memory")


def draw_bench_chart(report: dict, path: Path, what: str = "--plot") -> None:
    """Write the chart of a maskst-bench report to ``path`` (PNG) atomically: a failed write (InputError naming
    ``what``) leaves the previous chart, if any."""
    plt = agg_pyplot()

    names = list(dict.fromkeys([*(report.get("stages_ms") or {}), *(report.get("errors") or {})]))
    palette = [plt.get_cmap("tab10")(i) for i in range(10) if i != 7]  # tab10's 7 is a grey: the reference's
    contenders = [n for n in names if n != "reference"]
    colors = {"reference": "#999999", **{n: palette[i % len(palette)] for i, n in enumerate(contenders)}}
    bars = max(len(names), 0.6 * len(efficiency_rows(report)))  # the % panel has a bar per graph and contender
    fig, axes = plt.subplots(1, 3, figsize=(17, max(4.5, 2.5 + 0.3 * bars)))
    _end_to_end(axes[0], report, names)
    _efficiency(axes[1], report, names, colors)
    _memory(axes[2], report, names, colors)
    machine = report.get("machine") or {}
    cached = [n for n in names if split_contender(n)[1] > 1]
    notes = [f"{machine_name(machine)}; kernels' ISA: "
             f"{', '.join(machine.get('isa_flags') or ['-'])}"
             + (f" (EMULATED: oneDNN capped at {machine['cpu_isa_cap']})" if machine.get("cpu_isa_cap") else "")]
    if cached:
        notes.append("DeepCache contenders: " + ", ".join(cached))
    failed = list(report.get("errors") or {})
    if failed:
        notes.append("FAILED: " + ", ".join(failed))
    fig.suptitle("maskst-bench: " + "; ".join(notes), fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, what)
