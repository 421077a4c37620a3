"""PNG galleries of in-silico experiments (matplotlib, Agg backend), in the style of the evaluation report.

Each function takes the arrays an experiment returns plus the neurons' unit ids, draws at most ``limit`` neurons
(the first ones of the selection) and returns the written path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: files only, never a window
import matplotlib.pyplot as plt
import numpy as np

from sensorium_jax.insilico.validation import angle_difference

GALLERY_LIMIT = 24


def _save(figure, path: Path, dpi: int = 100) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _grid(count: int, columns: int, size: tuple[float, float], polar: bool = False):
    cols = min(columns, max(count, 1))
    rows = int(np.ceil(max(count, 1) / cols))
    figure, axes = plt.subplots(
        rows,
        cols,
        figsize=(size[0] * cols, size[1] * rows),
        squeeze=False,
        subplot_kw={"projection": "polar"} if polar else None,
    )
    for ax in axes.flat[count:]:
        ax.axis("off")
    return figure, list(axes.flat)


def _symmetric(ax, image: np.ndarray, cmap: str = "RdBu_r"):
    limit = float(np.abs(image).max()) or 1.0
    shown = ax.imshow(image, cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return shown


def mei_gallery(
    inputs: np.ndarray,
    responses: np.ndarray,
    unit_ids: np.ndarray,
    path: Path,
    title: str = "",
    limit: int = GALLERY_LIMIT,
) -> Path:
    """Rows of neurons, one column per start (``inputs (N, S, H, W)``; videos ``(N, S, T, H, W)`` show the best
    start's frames instead). Every image on its own symmetric grey scale around the blank screen."""
    n = min(len(inputs), limit)
    video = inputs.ndim == 5
    columns = 4 if video else inputs.shape[1]
    figure, axes = plt.subplots(n, columns, figsize=(2.4 * columns, 1.5 * n), squeeze=False)
    for row in range(n):
        best = int(np.argmax(responses[row]))
        for col in range(columns):
            ax = axes[row][col]
            if video:
                frames = inputs[row, best]
                index = np.linspace(0, len(frames) - 1, columns).round().astype(int)[col]
                _symmetric(ax, frames[index], cmap="gray")
                ax.set_title(f"frame {index}", fontsize=7)
            else:
                _symmetric(ax, inputs[row, col], cmap="gray")
                mark = " ★" if col == best else ""
                ax.set_title(f"start {col}: r={responses[row, col]:.2f}{mark}", fontsize=7)
        axes[row][0].set_ylabel(f"id {unit_ids[row]}", fontsize=8)
    figure.suptitle(title or "most exciting inputs (grey = blank screen)")
    return _save(figure, path)


def rf_gallery(
    signed: np.ndarray,
    energy: np.ndarray,
    table: dict[str, np.ndarray],
    unit_ids: np.ndarray,
    path: Path,
    limit: int = GALLERY_LIMIT,
) -> Path:
    """Per neuron the signed map at its peak lag and the energy map, with the fitted centre (+) and the 2σ circle
    of the fitted size; ``truth`` centres (x) when the table carries ``true_centre_x``."""
    n = min(len(signed), limit)
    figure, axes = _grid(2 * n, columns=6, size=(2.6, 1.7))
    angle = np.linspace(0, 2 * np.pi, 60)
    for i in range(n):
        for j, (image, name) in enumerate(((signed[i], "signed"), (energy[i], "energy"))):
            ax = axes[2 * i + j]
            _symmetric(ax, image, cmap="RdBu_r" if j == 0 else "PuOr_r")
            cx, cy = table["centre_x"][i], table["centre_y"][i]
            ax.plot(cx, cy, "k+", ms=8, mew=1.5)
            radius = 2 * table["size_px"][i]
            ax.plot(cx + radius * np.cos(angle), cy + radius * np.sin(angle), "k-", lw=0.6)
            if "true_centre_x" in table:
                ax.plot(table["true_centre_x"][i], table["true_centre_y"][i], "gx", ms=7, mew=1.5)
            ax.set_title(f"id {unit_ids[i]} {name}", fontsize=7)
    figure.suptitle(
        "receptive fields: + fitted centre, circle 2σ" + (", x true centre" if "true_centre_x" in table else "")
    )
    return _save(figure, path)


def temporal_profiles(profiles: np.ndarray, frame_rate: float, unit_ids: np.ndarray, path: Path) -> Path:
    """Temporal profiles ``(N, L)`` (lag 0 = the response frame), each scaled to peak 1, and their median."""
    figure, ax = plt.subplots(figsize=(6, 3.5))
    lags_ms = np.arange(profiles.shape[1]) * 1000.0 / frame_rate
    scaled = profiles / np.maximum(np.abs(profiles).max(axis=1, keepdims=True), 1e-30)
    for row in scaled[:GALLERY_LIMIT]:
        ax.plot(lags_ms, row, color="0.6", lw=0.7)
    ax.plot(lags_ms, np.median(scaled, axis=0), color="tab:red", lw=2, label=f"median of {len(scaled)}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="lag before the response (ms)", ylabel="signed map · peak map", title="temporal profiles")
    ax.legend(fontsize=8)
    return _save(figure, path)


def tuning_curves(
    tuning: dict[str, Any], protocol, unit_ids: np.ndarray, path: Path, limit: int = GALLERY_LIMIT // 2
) -> Path:
    """Per neuron: direction curve (with OSI/DSI), and the spatial-period, temporal-frequency and size curves."""
    n = min(len(tuning["direction_curve"]), limit)
    panels = 4 if "size_curve" in tuning else 3
    figure, axes = plt.subplots(n, panels, figsize=(3.0 * panels, 1.9 * n), squeeze=False)
    blank = tuning["blank"]
    for i in range(n):
        a = axes[i]
        a[0].plot(protocol.directions_deg, tuning["direction_curve"][i], "o-", ms=3)
        a[0].set_title(f"id {unit_ids[i]}: OSI {tuning['osi'][i]:.2f} DSI {tuning['dsi'][i]:.2f}", fontsize=8)
        for ax, values, curve in (
            (a[1], protocol.periods_px, tuning["period_curve"][i]),
            (a[2], protocol.temporal_hz, tuning["frequency_curve"][i]),
        ):
            ax.semilogx(values, curve, "o-", ms=3)
            ax.set_xticks(values, [f"{v:g}" for v in values])  # the protocol's values, not 10^k ticks
            ax.minorticks_off()
        if panels == 4:
            radii = np.asarray(protocol.radii_px, float)
            shown = np.where(np.isinf(radii), 2 * radii[np.isfinite(radii)].max(), radii)
            a[3].plot(shown, tuning["size_curve"][i], "o-", ms=3)
        for ax in a:
            ax.axhline(blank[i], color="0.6", lw=0.7, ls="--")
            ax.tick_params(labelsize=7)
    labels = ["direction (deg)", "period (px)", "temporal frequency (Hz)", "aperture radius (px; last: full)"]
    for ax, label in zip(axes[-1], labels):
        ax.set_xlabel(label, fontsize=8)
    figure.suptitle("grating tuning (dashed: blank screen)")
    return _save(figure, path)


def polar_plots(tuning: dict[str, Any], protocol, unit_ids: np.ndarray, path: Path, limit: int = GALLERY_LIMIT) -> Path:
    """Direction tuning as polar plots (evoked response above the blank), preferred direction marked."""
    n = min(len(tuning["direction_curve"]), limit)
    figure, axes = _grid(n, columns=6, size=(2.2, 2.4), polar=True)
    theta = np.deg2rad(np.append(protocol.directions_deg, protocol.directions_deg[0]))
    for i in range(n):
        ax = axes[i]
        evoked = np.maximum(tuning["direction_curve"][i] - tuning["blank"][i], 0.0)
        ax.plot(theta, np.append(evoked, evoked[0]), "-", color="tab:blue")
        ax.fill(theta, np.append(evoked, evoked[0]), alpha=0.25, color="tab:blue")
        peak = float(evoked.max()) or 1.0
        ax.plot([0, np.deg2rad(tuning["preferred_direction_deg"][i])], [0, peak], color="tab:red", lw=1.5)
        ax.set_theta_direction(-1)  # image y is down: angles grow clockwise on the screen
        ax.set_xticklabels([])
        ax.set_yticklabels([])
        ax.set_title(f"id {unit_ids[i]} DSI {tuning['dsi'][i]:.2f}", fontsize=7)
    figure.suptitle("direction tuning (evoked; red: preferred direction; clockwise = screen angle)")
    return _save(figure, path)


def behaviour_curves(result: dict[str, dict[str, np.ndarray]], unit_ids: np.ndarray, path: Path) -> Path:
    """Gain ``r / r(mean behaviour)`` against each swept variable (raw units): neurons thin, median thick."""
    figure, axes = plt.subplots(1, len(result), figsize=(5.2 * len(result), 3.6), squeeze=False)
    labels = {"running": "running speed (raw units)", "pupil": "pupil dilation (raw units)"}
    for ax, (variable, entry) in zip(axes[0], result.items()):
        for row in entry["gain"][:GALLERY_LIMIT]:
            ax.plot(entry["values_raw"], row, color="0.6", lw=0.7)
        ax.plot(entry["values_raw"], np.median(entry["gain"], axis=0), color="tab:red", lw=2.2, label="median")
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set(xlabel=labels.get(variable, variable), ylabel="gain (rate / rate at the mean)", title=variable)
        ax.legend(fontsize=8)
    figure.suptitle(f"behavioural gain for a fixed stimulus ({len(next(iter(result.values()))['gain'])} neurons)")
    return _save(figure, path)


def validation_figure(truth: dict[str, Any], neurons: np.ndarray, rf: dict | None, tuning: dict | None, judged, path):
    """Recovered vs true centres and orientations, and DSI of selective vs other neurons (judged neurons only)."""
    panels = [p for p, present in (("centre", rf), ("orientation", tuning), ("dsi", tuning)) if present is not None]
    figure, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 4), squeeze=False)
    judged = np.asarray(judged, bool)
    for ax, panel in zip(axes[0], panels):
        if panel == "centre":
            dx = rf["centre_x"] - truth["centre_x"][neurons]
            dy = rf["centre_y"] - truth["centre_y"][neurons]
            ax.scatter(dx[judged], dy[judged], s=8, alpha=0.7)
            ax.add_patch(plt.Circle((0, 0), 2.0, fill=False, color="tab:red"))
            within = np.mean(np.hypot(dx, dy)[judged] <= 2.0) if judged.any() else np.nan
            ax.set(
                xlim=(-6, 6),
                ylim=(6, -6),
                xlabel="Δx (px)",
                ylabel="Δy (px)",
                title=f"centre error: {within:.0%} ≤ 2 px",
            )
            ax.set_aspect("equal")
        elif panel == "orientation":
            true = truth["orientation_deg"][neurons][judged]
            found = tuning["preferred_orientation_deg"][judged]
            ax.scatter(true, found, s=8, alpha=0.7)
            ax.plot([0, 180], [0, 180], "k--", lw=0.7)
            within = np.mean(angle_difference(found, true, 180.0) <= 15.0) if judged.any() else np.nan
            ax.set(
                xlabel="true orientation (deg)", ylabel="preferred orientation (deg)", title=f"{within:.0%} within 15°"
            )
        else:
            selective = np.asarray(truth["direction_selective"], bool)[neurons]
            bins = np.linspace(0, 1, 21)
            ax.hist(tuning["dsi"][judged & selective], bins=bins, alpha=0.6, label="direction selective")
            ax.hist(tuning["dsi"][judged & ~selective], bins=bins, alpha=0.6, label="others")
            ax.set(xlabel="DSI", ylabel="neurons", title="DSI by true direction selectivity")
            ax.legend(fontsize=8)
    figure.suptitle(f"recovery of the ground truth ({int(judged.sum())} well-predicted neurons)")
    return _save(figure, path)
