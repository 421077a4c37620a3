"""PNG plots of an evaluation, written next to its metrics (matplotlib, Agg backend: no display needed).

* ``correlation_distribution.png`` — histogram of per-neuron single-trial correlations, one panel per mouse;
* ``traces.png`` — recorded vs predicted responses of the best, median and worst neuron of every mouse on one
  trial of the report tier;
* ``correlation_vs_ceiling.png`` — each neuron's correlation against its noise ceiling (the true ceiling on
  synthetic data, the repeat-based leave-one-out estimate on real data);
* ``training_curves.png`` — loss, validation correlation and learning rate from each run's ``metrics.jsonl``;
* ``readout_positions.png`` — every neuron's readout position in the core's visual field, coloured by its
  correlation.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt
import numpy as np

from sensorium_jax.data import layout
from sensorium_jax.evaluation.benchmark import Benchmark

REPORT_FILES = (
    "correlation_distribution.png",
    "traces.png",
    "correlation_vs_ceiling.png",
    "training_curves.png",
    "readout_positions.png",
)


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _grid(count: int, columns: int = 3, size: tuple[float, float] = (4.0, 3.0)):
    cols = min(columns, max(count, 1))
    rows = int(np.ceil(max(count, 1) / cols))
    figure, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.axis("off")
    return figure, list(axes.flat)


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def correlation_distribution(benchmark: Benchmark, path: Path) -> Path:
    tier = benchmark.report_tier
    mice = [m for m in benchmark.scores if tier in benchmark.scores[m]]
    figure, axes = _grid(len(mice))
    for ax, mouse in zip(axes, mice):
        values = benchmark.scores[mouse][tier]["per_neuron_single_trial"]
        ax.hist(values, bins=min(40, max(5, len(values) // 5)), color="tab:blue", alpha=0.8)
        ax.axvline(values.mean(), color="k", linestyle="--", label=f"mean {values.mean():.3f}")
        ax.set(title=_short(mouse), xlabel="single-trial correlation", ylabel="neurons")
        ax.legend(fontsize=8)
    figure.suptitle(f"per-neuron correlation ({tier})")
    return _save(figure, path)


def traces(benchmark: Benchmark, path: Path) -> Path:
    tier = benchmark.report_tier
    mice = list(benchmark.report_trials)
    figure, axes = plt.subplots(max(len(mice), 1), 3, figsize=(13, 2.4 * max(len(mice), 1)), squeeze=False)
    for row, mouse in enumerate(mice):
        tp = benchmark.report_trials[mouse]
        correlations = benchmark.scores[mouse][tier]["per_neuron_single_trial"]
        order = np.argsort(correlations)
        picks = {"best": order[-1], "median": order[len(order) // 2], "worst": order[0]}
        response, prediction = tp.responses[0], tp.predictions[0]
        frames = np.arange(response.shape[0])
        scored = np.arange(response.shape[0] - prediction.shape[0], response.shape[0])
        for col, (label, neuron) in enumerate(picks.items()):
            ax = axes[row][col]
            ax.plot(frames / layout.FRAME_RATE_HZ, response[:, neuron], color="0.4", lw=0.8, label="recorded")
            ax.plot(scored / layout.FRAME_RATE_HZ, prediction[:, neuron], color="tab:red", lw=1.0, label="predicted")
            ax.axvspan(0, layout.BURN_IN_FRAMES / layout.FRAME_RATE_HZ, color="0.9", zorder=-1)
            ax.set_title(f"{_short(mouse, 22)}: {label} neuron {neuron} (r={correlations[neuron]:.2f})", fontsize=9)
            ax.set_xlabel("time (s)")
        axes[row][0].set_ylabel(f"trial {tp.trials[0]}")
    axes[0][0].legend(fontsize=8, loc="upper right")
    figure.suptitle(f"recorded vs predicted ({tier}; grey: unscored first {layout.BURN_IN_FRAMES} frames)")
    return _save(figure, path)


def correlation_vs_ceiling(benchmark: Benchmark, path: Path) -> Path:
    tier = benchmark.report_tier
    mice = [m for m in benchmark.scores if tier in benchmark.scores[m] and tier in benchmark.ceilings.get(m, {})]
    figure, ax = plt.subplots(figsize=(5.5, 5))
    kinds = set()
    for mouse in mice:
        ceiling = benchmark.ceilings[mouse][tier]
        kinds.add(ceiling["kind"])
        model = benchmark.scores[mouse][tier]["per_neuron_single_trial"]
        ax.scatter(ceiling["per_neuron"], model, s=6, alpha=0.6, label=_short(mouse))
    if mice:
        everything = np.concatenate(
            [benchmark.ceilings[m][tier]["per_neuron"] for m in mice]
            + [benchmark.scores[m][tier]["per_neuron_single_trial"] for m in mice]
        )
        low, high = min(0.0, float(everything.min())), max(0.05, float(everything.max()))
        ax.plot([low, high], [low, high], "k--", lw=0.8, label="model = ceiling")
        ax.legend(fontsize=7, markerscale=2)
    else:
        ax.text(
            0.5, 0.5, "no noise ceiling: no repeated videos and no ground truth", ha="center", transform=ax.transAxes
        )
    ax.set(
        xlabel=f"noise ceiling: {'; '.join(sorted(kinds)) or 'n/a'}",
        ylabel="model single-trial correlation",
        title=f"per-neuron correlation vs ceiling ({tier})",
    )
    return _save(figure, path)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a killed run
    return records


def training_curves(workdirs: Sequence[str | Path], path: Path) -> Path:
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = (("loss", "training loss"), ("validation_correlation", "validation correlation"), ("lr", "learning rate"))
    found = False
    for workdir in workdirs:
        records = read_metrics(Path(workdir) / "metrics.jsonl")
        for ax, (key, _) in zip(axes, panels):
            points = sorted((r["step"], r[key]) for r in records if key in r)
            if points:
                found = True
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o" if len(points) < 30 else None, ms=3, label=Path(workdir).name)
    for ax, (key, title) in zip(axes, panels):
        ax.set(title=title, xlabel="step")
        if key in ("loss", "lr"):
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize=7)
    if not found:
        axes[1].text(0.5, 0.5, "no metrics.jsonl records", ha="center", transform=axes[1].transAxes)
    return _save(figure, path)


def readout_positions(model, benchmark: Benchmark, path: Path) -> Path:
    tier = benchmark.report_tier
    mice = [m for m in benchmark.scores if tier in benchmark.scores[m]]
    figure, axes = _grid(len(mice), columns=3, size=(5.2, 3.4))
    scatter = None
    correlations = [benchmark.scores[m][tier]["per_neuron_single_trial"] for m in mice]
    limit = max([0.05, *(float(np.abs(c).max()) for c in correlations)])
    for ax, mouse, values in zip(axes, mice, correlations):
        positions = model.readout_positions(mouse)
        scatter = ax.scatter(positions[:, 0], positions[:, 1], c=values, cmap="coolwarm", vmin=-limit, vmax=limit, s=10)
        ax.set(xlim=(-1.05, 1.05), ylim=(1.05, -1.05), title=_short(mouse))  # y down, like the image rows
        # the grid's [−1, 1]² spans the (approximately 64 × 36) image: one unit of y is 36/64 of one unit of x
        ax.set_aspect(layout.VIDEO_HEIGHT / layout.VIDEO_WIDTH)
        ax.set_xlabel("horizontal (readout grid, −1 … 1)")
        ax.set_ylabel("vertical")
    if scatter is not None:
        figure.colorbar(scatter, ax=axes[: len(mice)], label=f"single-trial correlation ({tier})")
        figure.suptitle("readout positions in visual space (core feature map; y down)")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_report(model, benchmark: Benchmark, output: str | Path) -> list[Path]:
    """All plots into ``output``; returns the written files. Needs one labelled tier for the score plots."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = [training_curves([m.workdir for m in model.members], output / "training_curves.png")]
    if benchmark.report_tier is None:
        return written
    written.append(correlation_distribution(benchmark, output / "correlation_distribution.png"))
    written.append(traces(benchmark, output / "traces.png"))
    written.append(correlation_vs_ceiling(benchmark, output / "correlation_vs_ceiling.png"))
    written.append(readout_positions(model, benchmark, output / "readout_positions.png"))
    return written
