"""The maskst-eval chart: methods side by side (matplotlib, Agg backend; ``pip install "maskst[bench]"``).

Left: text score (x) against style score (y), every image as a faint dot and each method's mean
with its 95% interval as error bars. Right: leakage and gated leakage per method (bars: means,
whiskers: 95% intervals; lower is better).
"""

from __future__ import annotations

from pathlib import Path

from maskst.contract.files import agg_pyplot, save_figure


def _interval(stat: dict) -> tuple[float, float]:
    """(mean, half width) of a metrics.mean_interval entry (half width 0 without an interval)."""
    if stat["ci95"] is None:
        return stat["mean"], 0.0
    return stat["mean"], (stat["ci95"][1] - stat["ci95"][0]) / 2


def plot_report(report: dict, path: Path, what: str = "--plot") -> None:
    """Write the chart of a :func:`maskst.sweep.evaluate.evaluate` report to ``path`` (PNG), atomically: a failed
    write (InputError naming ``what``) leaves the previous chart, if any."""
    plt = agg_pyplot()
    from matplotlib.patches import Patch

    summary = report["summary"]
    methods = list(summary)
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for method in methods:
        rows = [r for r in report["images"] if r["method"] == method]
        left.scatter([r["text_score"] for r in rows], [r["style_score"] for r in rows], s=10, alpha=0.25,
                     color=colors[method])
        (x, dx), (y, dy) = _interval(summary[method]["text_score"]), _interval(summary[method]["style_score"])
        left.errorbar([x], [y], xerr=[dx], yerr=[dy], fmt="o", ms=8, capsize=4, color=colors[method],
                      label=f"{method} (n={summary[method]['images']})")
    left.set_xlabel("text score  cos(generated, prompt)")
    left.set_ylabel("style score  cos(generated, style)")
    left.set_title("style vs text (mean, 95% interval)")
    left.legend(fontsize=8)
    width = 0.38
    for offset, score, hatch in ((-width / 2, "leakage", ""), (width / 2, "gated_leakage", "//")):
        means, errs = [], []
        for method in methods:
            stat = summary[method][score]
            mean, half = _interval(stat) if stat["mean"] is not None else (0.0, 0.0)
            means.append(mean)
            errs.append(half)
        right.bar([i + offset for i in range(len(methods))], means, width, yerr=errs, capsize=4, hatch=hatch,
                  color=[colors[m] for m in methods], edgecolor="black")
    right.set_xticks(range(len(methods)), methods)
    right.axhline(1.0, color="gray", lw=0.8, ls="--")
    right.set_ylabel("cos(gen, content) / cos(style, content)")
    right.set_title("content leakage (lower is better)")
    low, high = right.get_ylim()
    right.set_ylim(low, high + 0.15 * (high - low))  # room for the legend
    right.legend(handles=[Patch(facecolor="white", edgecolor="black", label="leakage"),
                          Patch(facecolor="white", edgecolor="black", hatch="//", label="gated leakage (unfaithful = 1)")],
                 fontsize=8, loc="upper center", ncol=2)
    fig.tight_layout()
    save_figure(fig, path, what=what)
