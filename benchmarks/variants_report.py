"""Tables and plot of ``benchmarks/variants.py`` (from its results; no number typed by hand)."""

import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from low_memory import smooth

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MARKERS = ("<!-- variants:begin -->", "<!-- variants:end -->")
SPLITS = (("mlp", "train", "MLP train"), ("mlp", "test", "MLP test"), ("lm", "test", "LM held-out"))
OFF_SCALE = 100  # %: a larger Δ is drawn at the panel's edge
ARROW = {"lower": " ▼", "higher": " ▲", "not resolved": ""}


def _loss(s: dict) -> str:
    if s["non_finite"]:
        return f"non-finite on {s['non_finite']}/{len(s['per_seed'])} seeds"
    return f"{s['mean']:.4g} ± {s['se']:.2g}"


def _delta(s: dict, name: str) -> str:
    d = s["rel_diff"]
    if name == "adamw":
        return "(reference)"
    if s["non_finite"] or not np.isfinite(d["mean"]):
        return "-"
    return f"{_pct(d['mean'] * 100)[:-1]} ± {_pct(d['se'] * 100)[1:]}{ARROW[s['vs_adamw']]}"


def _head(result: dict) -> str:
    c, t = result["config"], result["config"]["tasks"]
    no_decay = [n for n, applied in result["decay"].items() if not applied]
    runs = "; ".join(
        f"{label} {t[task]['steps']} steps × {t[task]['seeds']} seeds, peak lr "
        f"{t[task]['peak_lr']:g}, weight decay {t[task]['weight_decay']:g}"
        for task, label in (("mlp", "digits MLP"), ("lm", "induction-head LM"))
    )
    return (
        f"Run {c['date_utc']} on {c['cpu_count']} CPU cores ({c['machine']}, shared with other "
        f"jobs), jax {c['jax']}, optax {c['optax']}, adamx at {c['git_commit']}; load average "
        f"{c['load_average_at_start']:.1f} at the start, {c['load_average_at_end']:.1f} at the "
        f"end; {result['total_seconds'] / 60:.1f} min in all. {runs}. Every variant runs "
        "AdamW's schedule (warmup 5% of the steps, cosine decay to 0) at AdamW's peak lr, with "
        "its alias's defaults otherwise: nothing is tuned per variant"
        + (f"; no weight decay for {', '.join(no_decay)} (its alias takes none)" if no_decay
           else "")
        + ". Loss: the final loss, mean ± SE over seeds. Δ: the paired relative difference to "
        "AdamW on the same seed (same init and batches), mean ± SE; ▼ lower / ▲ higher: "
        "mean ± 2 SE excludes 0; no mark: these seeds resolve no difference."
        + (" **Quick run (smoke test).**" if result["quick"] else "")
    )  # fmt: skip


def tables(result: dict) -> str:
    """The results table, then every variant's chain as run."""
    columns = " | ".join(f"{label} loss | {label} Δ" for _, _, label in SPLITS)
    lines = [_head(result), "", f"| variant | {columns} | s per run, MLP / LM (no compile) |",
             "|---|" + "---|---|" * len(SPLITS) + "---|"]  # fmt: skip
    summary, secs = result["summary"], result["seconds_per_run"]
    for name in summary["mlp"]:
        cells = [
            f"{_loss(summary[task][name][split])} | {_delta(summary[task][name][split], name)}"
            for task, split, _ in SPLITS
        ]
        lines.append(f"| `{name}` | {' | '.join(cells)} | "
                     f"{secs['mlp'][name]:.2f} / {secs['lm'][name]:.2f} |")  # fmt: skip
    lines += [
        "",
        "| variant | as run (lr: the schedule, wd: the task's weight decay) |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | `{call}` |" for name, call in result["calls"].items()]
    if result["skipped"]:
        lines += ["", "Not run (not yet implemented when the benchmark ran): "
                  + ", ".join(f"`{n}`" for n in result["skipped"]) + "."]  # fmt: skip
    return "\n".join(lines)


def write_section(path: Path, text: str) -> bool:
    """Replace what stands between this benchmark's MARKERS in ``path``; False if none."""
    begin, end = MARKERS
    old = path.read_text()
    if begin not in old or end not in old:
        return False
    head, rest = old.split(begin, 1)
    path.write_text(f"{head}{begin}\n{text}\n{end}{rest.split(end, 1)[1]}")
    return True


def _pct(x: float) -> str:
    """A percentage, signed: two decimals under 1%, one under 1000%, else two digits."""
    return f"{x:+.2f}%" if abs(x) < 1 else f"{x:+.1f}%" if abs(x) < 1000 else f"{x:+.2g}%"


def _delta_panel(ax: plt.Axes, diffs: list[dict], names: list[str], label: str) -> None:
    """Δ ± 2 SE per variant; a variant off by more than OFF_SCALE is drawn as an arrow at
    the edge with its value, so that it does not squash the others."""
    mean = np.array([d["mean"] for d in diffs]) * 100
    err = np.array([2 * d["se"] for d in diffs]) * 100
    shown = np.isfinite(mean) & (np.abs(mean) <= OFF_SCALE)
    lo = min(0.0, np.min(mean[shown] - err[shown], initial=0.0))
    hi = max(0.0, np.max(mean[shown] + err[shown], initial=0.0))
    pad = 0.15 * (hi - lo) + 0.5
    ys = np.arange(len(names))
    ax.errorbar(mean[shown], ys[shown], xerr=err[shown], fmt="o", capsize=3)
    for y, m, ok in zip(ys, mean, shown, strict=True):
        edge = hi + pad if m > 0 else lo - pad
        if not ok and np.isfinite(m):
            ax.plot(edge, y, ">" if m > 0 else "<", color="C3")
        ax.annotate(_pct(m) + ("" if ok else " (off scale)"), (m if ok else edge, y),
                    xytext=(-60 if not ok and m > 0 else 4, 5), textcoords="offset points",
                    fontsize=7)  # fmt: skip
    ax.set_xlim(lo - 1.3 * pad, hi + 1.3 * pad)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(title=f"{label}: final loss Δ vs AdamW (± 2 SE)", xlabel="Δ (%)")
    ax.grid(alpha=0.3)


def plot(result: dict, curves: dict, path: Path) -> None:
    """Top: each split's paired Δ vs AdamW (± 2 SE) per variant; bottom: training losses."""
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    names = list(result["summary"]["mlp"])
    for ax, (task, split, label) in zip(axes[0], SPLITS, strict=True):
        diffs = [result["summary"][task][n][split]["rel_diff"] for n in names]
        _delta_panel(ax, diffs, names, label)
        ax.set_yticks(range(len(names)), names if ax is axes[0][0] else [""] * len(names))
        ax.invert_yaxis()
    k = 5 if result["quick"] else 25
    for ax, task in zip(axes[1], ("mlp", "lm"), strict=False):
        for name, losses in curves[task].items():
            ax.plot(smooth(losses, k), lw=2.2 if name == "adamw" else 1.1, label=name)
        seeds = result["config"]["tasks"][task]["seeds"]
        ax.set(title=f"{task}: training loss (mean of {seeds} seeds, moving avg. {k} steps)",
               xlabel="step", yscale="log")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[1][1].legend(fontsize=8)
    axes[1][2].axis("off")
    axes[1][2].text(0, 1, textwrap.fill(_head(result).replace("**", ""), 75), va="top", fontsize=8,
                    transform=axes[1][2].transAxes)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
