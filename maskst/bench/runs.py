"""Several saved maskst-bench reports side by side (``maskst-bench --from-json A.json --from-json B.json``).

On a shared VM one run's figures move with the host (issue 15's 70% line has been met and missed by the same graph
on the same kind of machine), so a claim about a machine kind rests on several runs. This module puts them in one
table, one row per report, and (``--plot``) one chart:

* the best backend without step caching and its end-to-end speedup, against the goal of that run's CPU kind;
* the fastest UNet's % of the measured ceiling of its precision, against 70%;
* the best DeepCache contender's speedup over its own backend's full computation, against 1.8x;
* the worst peak RSS of any backend against the reference's.

Every row is judged by today's rules: :func:`maskst.bench.bench.evaluate_targets` runs again on the saved figures,
so a report written before a target or a CPU kind's goal existed is judged like a new one, and the figures are the
report's own (nothing is re-measured). A figure a report does not have (no reference, no ceilings, no DeepCache
contender) is shown as "-", never guessed.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

from maskst.bench.bench import DEEPCACHE_GOAL, UNET_PCT_GOAL, end_to_end_goal, evaluate_targets, machine_name
from maskst.contract.files import agg_pyplot, save_figure

MET, NOT_MET, NO_GOAL = "#55a868", "#c44e52", "#4c72b0"  # bar colours: met, not met, no goal for this CPU kind


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """The issue's figures of one saved report (None: the report does not have that figure)."""

    label: str  # what the table and chart call the run: the report file's name without .json
    created: str | None  # the report's UTC creation time, ISO 8601
    machine: str  # CPU model and cores, "(EMULATED ...)" under --cpu-isa-cap
    machine_class: str  # the CPU kind that sets the end-to-end goal (AMX; AVX-512 BF16 / VNNI without AMX; ...)
    goal: float | None  # that kind's end-to-end goal (x the reference); None: the issue sets none
    best: str | None  # the fastest backend without step caching, and its speedup over the reference
    speedup: float | None
    unet_backend: str | None  # the fastest UNet's contender, precision and % of its precision's ceiling
    unet_precision: str | None
    unet_pct: float | None
    deepcache_backend: str | None  # the best DeepCache contender, and its speedup over its backend's full run
    deepcache_speedup: float | None
    rss_backend: str | None  # the backend with the highest peak RSS, that peak, and the reference's (MiB)
    rss_mib: float | None
    rss_reference_mib: float | None

    @property
    def speedup_met(self) -> bool | None:
        return None if self.goal is None or self.speedup is None else self.speedup >= self.goal

    @property
    def unet_met(self) -> bool | None:
        return None if self.unet_pct is None else self.unet_pct >= UNET_PCT_GOAL

    @property
    def deepcache_met(self) -> bool | None:
        return None if self.deepcache_speedup is None else self.deepcache_speedup >= DEEPCACHE_GOAL

    @property
    def rss_met(self) -> bool | None:
        if self.rss_mib is None or self.rss_reference_mib is None:
            return None
        return self.rss_mib <= self.rss_reference_mib

    # the figures as the table and the chart print them ("" where the report does not have the figure)
    @property
    def speedup_text(self) -> str:
        return "" if self.speedup is None else f"{_shown(self.speedup, 2, self.goal)}x {self.best}"

    @property
    def unet_text(self) -> str:
        return "" if self.unet_pct is None else f"{_shown(self.unet_pct, 1, UNET_PCT_GOAL)}% {self.unet_precision or ''}"

    @property
    def deepcache_text(self) -> str:
        return "" if self.deepcache_speedup is None else f"{_shown(self.deepcache_speedup, 2, DEEPCACHE_GOAL)}x"


def summarize(label: str, report: dict) -> RunSummary:
    """The summary of one report (a dict as ``maskst-bench --json`` wrote it; checked by the caller)."""
    machine = report.get("machine") or {}
    goal, machine_class = end_to_end_goal(machine.get("isa_flags"))
    text = machine_name(machine)
    if machine.get("cpu_isa_cap"):
        text += f" (EMULATED: oneDNN capped at {machine['cpu_isa_cap']})"
    targets = evaluate_targets(report)
    speed = next((v for k, v in targets.items() if k.startswith("end_to_end_speedup_") and not k.endswith("_quiet")),
                 {})
    unet = targets.get("unet_step_at_least_70pct_of_ceiling") or {}
    cached = targets.get(f"deepcache_speedup_at_least_{DEEPCACHE_GOAL:g}x") or {}
    peaks = report.get("peak_rss_mib") or {}
    rss = {n: v for n, v in peaks.items() if n != "reference"}
    worst = max(rss, key=rss.get) if rss else None
    return RunSummary(label=label, created=report.get("created"), machine=text, machine_class=machine_class, goal=goal,
                      best=speed.get("backend"), speedup=speed.get("speedup"), unet_backend=unet.get("backend"),
                      unet_precision=unet.get("precision"), unet_pct=unet.get("pct"),
                      deepcache_backend=cached.get("backend"), deepcache_speedup=cached.get("speedup"),
                      rss_backend=worst, rss_mib=rss.get(worst),
                      rss_reference_mib=peaks.get("reference"))


def _shown(value: float, digits: int, goal: float | None) -> str:
    """``value`` to ``digits`` decimals, rounded down where rounding would lift it to a goal it misses (1.7996x
    against 1.8x reads 1.79x, not 1.80x)."""
    text = f"{value:,.{digits}f}"
    if goal is not None and value < goal <= float(text.replace(",", "")):
        scale = 10 ** digits
        text = f"{math.floor(value * scale) / scale:,.{digits}f}"
    return text


def _verdict(met: bool | None) -> str:
    return {True: "met", False: "NOT met", None: "no goal"}[met]


def format_runs_table(runs: list[RunSummary]) -> str:
    """A Markdown table, one row per run, and a line per target with how many runs met it."""
    lines = ["| run | created (UTC) | machine | CPU kind: end-to-end goal | best without step caching | "
             f"UNet % of its precision's ceiling (goal {UNET_PCT_GOAL:g}%) | DeepCache, over its backend "
             f"(goal {DEEPCACHE_GOAL:g}x) | peak RSS, highest backend / reference (MiB) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        goal = f"{r.machine_class}: {r.goal:g}x" if r.goal is not None else f"{r.machine_class}: none"
        best = f"{r.speedup_text} ({_verdict(r.speedup_met)})" if r.speedup is not None else "-"
        unet = f"{r.unet_text}, {r.unet_backend} ({_verdict(r.unet_met)})" if r.unet_pct is not None else "-"
        cached = (f"{r.deepcache_text}, {r.deepcache_backend} ({_verdict(r.deepcache_met)})"
                  if r.deepcache_speedup is not None else "-")
        rss = (f"{r.rss_mib:,.0f} ({r.rss_backend}) / {r.rss_reference_mib:,.0f} ({_verdict(r.rss_met)})"
               if r.rss_mib is not None and r.rss_reference_mib is not None else "-")
        created = (r.created or "-")[:16].replace("T", " ")
        lines.append(f"| {r.label} | {created} | {r.machine} | {goal} | {best} | {unet} | {cached} | {rss} |")
    counts = []
    for what, verdicts in (("end to end", [r.speedup_met for r in runs]),
                           ("UNet % of ceiling", [r.unet_met for r in runs]),
                           ("DeepCache", [r.deepcache_met for r in runs]), ("peak RSS", [r.rss_met for r in runs])):
        judged = [v for v in verdicts if v is not None]
        counts.append(f"{what}: met in {sum(judged)} of {len(judged)} runs" if judged else f"{what}: no run judged")
    return "\n".join(lines) + "\n\n" + "; ".join(counts) + " (judged by today's rules from each report's own figures)"


def short_labels(labels: list[str]) -> tuple[str, list[str]]:
    """(common prefix, the labels without it): ``full-256-steps10-zen4-a`` and ``...-b`` become ``zen4-a`` and
    ``zen4-b`` under ``full-256-steps10-``; the prefix is cut after its last '-', '_' or '.' so no word is split."""
    prefix = os.path.commonprefix(labels) if len(labels) > 1 else ""
    cut = max(prefix.rfind(c) for c in "-_.") + 1
    prefix = prefix[:cut]
    return prefix, [label[len(prefix):] for label in labels]


def _bars(axis, runs: list[RunSummary], values: list[float | None], verdicts: list[bool | None], labels: list[str],
          goal_line: float | None, title: str, xlabel: str) -> None:
    y = list(range(len(runs)))[::-1]
    shown = [(row, v, met, text) for row, v, met, text in zip(y, values, verdicts, labels) if v is not None]
    for row, value, met, text in shown:
        axis.barh(row, value, color={True: MET, False: NOT_MET, None: NO_GOAL}[met])
        axis.text(value, row, f" {text}", va="center", fontsize=7)
    for row, value in zip(y, values):
        if value is None:
            axis.text(0, row, " not in this report", va="center", fontsize=7, color="gray")
    top = max([v for _, v, _, _ in shown] + ([goal_line] if goal_line is not None else []) + [1.0])
    if goal_line is not None:
        axis.axvline(goal_line, color="gray", ls="--", lw=0.9)
    axis.set_xlim(0, top * 1.3)  # room for the labels
    axis.set_title(title, fontsize=9)
    axis.set_xlabel(xlabel, fontsize=8)


def draw_runs_chart(runs: list[RunSummary], path: Path, what: str = "--plot") -> None:
    """Write the chart of several runs to ``path`` (PNG) atomically: three panels of one bar per run, green where
    the run met the target, red where not, blue where the issue sets no goal for its CPU kind; the end-to-end
    panel marks each run's own goal (a tick on its bar), the others their single goal line."""
    plt = agg_pyplot()

    fig, axes = plt.subplots(1, 3, figsize=(17, max(3.5, 1.8 + 0.42 * len(runs))), sharey=True)
    prefix, labels = short_labels([r.label for r in runs])
    axes[0].set_yticks(range(len(runs))[::-1], labels, fontsize=7)
    _bars(axes[0], runs, [r.speedup for r in runs], [r.speedup_met for r in runs],
          [r.speedup_text for r in runs], None,
          "best backend without step caching", "speedup over the PyTorch reference, end to end")
    y = list(range(len(runs)))[::-1]
    for row, r in zip(y, runs):  # each run's goal: its CPU kind's
        if r.goal is not None:
            axes[0].plot([r.goal, r.goal], [row - 0.45, row + 0.45], color="black", lw=1.2)
    _bars(axes[1], runs, [r.unet_pct for r in runs], [r.unet_met for r in runs],
          [r.unet_text for r in runs],
          UNET_PCT_GOAL, f"fastest UNet (goal {UNET_PCT_GOAL:g}%)", "% of its precision's measured ceiling")
    _bars(axes[2], runs, [r.deepcache_speedup for r in runs], [r.deepcache_met for r in runs],
          [r.deepcache_text for r in runs],
          DEEPCACHE_GOAL, f"DeepCache (goal {DEEPCACHE_GOAL:g}x)", "speedup over its backend's full computation")
    kinds = sorted({r.machine for r in runs})
    fig.suptitle(f"maskst-bench runs{f' {prefix}*' if prefix else ''} on " + "; ".join(kinds) + "\ngreen: met; red: "
                 "not met; blue: no goal for that CPU kind; black tick: the run's end-to-end goal", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, what)

