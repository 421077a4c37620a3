"""Score a restored model (or ensemble) like the benchmark: per mouse, tier and stimulus type, and overall.

For every labelled evaluation tier of every mouse: single-trial correlation and correlation to average (repeats
found by hashing the frames), on the ``T − 50`` scored frames of full-length trials. Bonus tiers are also scored
per out-of-distribution stimulus type where the types can be told apart: the data ship no stimulus ids, so the
types come from an annotation — ``meta/trials/stimulus_types.npy`` in the session folder, or
``<dir>/<session name>.npy`` given with ``--stimulus_types`` — holding one entry per trial, either names or the
integer codes of ViV1T's manual annotation (0 movie, 1 directional pink noise, 2 gaussian dots, 3 random dot
kinematogram, 4 drifting gabor, 5 image; −1 unknown). Without one, a bonus tier is scored as a whole.

"Overall" pools all neurons of all mice (the benchmark's mean over neurons); ``mean_over_mice`` is the mean of
the per-mouse values, as the competition server averaged. Tiers whose responses are all zero (withheld labels)
are listed as unlabelled and not scored. Noise ceilings: the true one on synthetic data (its noiseless rates),
otherwise a repeat-based estimate (each repeat predicted by the mean of the other repeats).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from sensorium_jax.data import layout
from sensorium_jax.data.reader import Session, load_small
from sensorium_jax.evaluation import metrics
from sensorium_jax.evaluation.evaluate import TierPredictions, is_labelled, predict_trials

BONUS_TIERS = (layout.Tier.LIVE_TEST_BONUS.value, layout.Tier.FINAL_TEST_BONUS.value)
#: ViV1T's integer stimulus codes (``misc/assign_stimulus_ids.py``), for annotations stored as integers.
STIMULUS_CODES = {
    0: "movie",
    1: "directional pink noise",
    2: "gaussian dots",
    3: "random dot kinematogram",
    4: "drifting gabor",
    5: "image",
}
STIMULUS_TYPES_FILE = "stimulus_types.npy"


def stimulus_types_path(session: Session) -> Path:
    return session.path / "meta" / "trials" / STIMULUS_TYPES_FILE


def load_stimulus_types(session: Session, annotation_dir: str | Path | None = None) -> np.ndarray | None:
    """Stimulus type name per trial (n_trials,), or None where no annotation exists."""
    candidates = [Path(annotation_dir) / f"{session.name}.npy"] if annotation_dir else []
    candidates.append(stimulus_types_path(session))
    for path in candidates:
        if not path.is_file():
            continue
        values = np.asarray(load_small(path, "stimulus type of every trial"))
        if values.shape != (session.num_trials,):
            raise layout.DataFormatError(
                path, f"expected one stimulus type per trial, shape ({session.num_trials},), got {values.shape}"
            )
        if values.dtype.kind in "iu":
            unknown = sorted(set(values.tolist()) - set(STIMULUS_CODES) - {-1})
            if unknown:
                raise layout.DataFormatError(path, f"unknown stimulus codes {unknown}; known: {STIMULUS_CODES}")
            return np.array([STIMULUS_CODES.get(int(v), "unknown") for v in values])
        return values.astype(str)
    if annotation_dir:
        raise FileNotFoundError(f"{candidates[0]}: no stimulus-type annotation for {session.name}")
    return None


def synthetic_ceiling(session: Session, tier: str) -> np.ndarray | None:
    """Per-neuron true noise ceiling (single-trial correlation of the noiseless rates) of a synthetic session."""
    from sensorium_jax.data import synthetic

    if not (session.path / synthetic.GROUND_TRUTH_DIR / "neurons.npz").is_file():
        return None
    return synthetic.ceiling_correlations(session.path, (tier,))["single_trial_per_neuron"]


def score(tp: TierPredictions) -> dict[str, Any]:
    """Benchmark scores of a set of trials of one mouse; ``per_neuron_*`` arrays are for plots, not JSON."""
    responses = [r.T for r in tp.responses]
    predictions = [p.T for p in tp.predictions]
    single = metrics.single_trial_correlation_np(responses, predictions)
    result: dict[str, Any] = {
        "single_trial_correlation": float(single.mean()),
        "num_trials": len(responses),
        "num_repeated_videos": len(metrics.group_repeats(tp.video_ids)),
        "per_neuron_single_trial": single,
    }
    if metrics.group_repeats(tp.video_ids):
        average = metrics.correlation_to_average_np(responses, predictions, tp.video_ids)
        result["correlation_to_average"] = float(average.mean())
        result["per_neuron_correlation_to_average"] = average
    return result


@dataclasses.dataclass
class Benchmark:
    """Everything :func:`run` computed: JSON-ready results and the arrays the report plots."""

    results: dict[str, Any]
    # per mouse: tier → scores with per-neuron arrays (ensemble-mean model)
    scores: dict[str, dict[str, dict[str, Any]]]
    # per mouse: the trials of the report tier (responses and predictions), and per-neuron ceilings
    report_trials: dict[str, TierPredictions]
    ceilings: dict[str, dict[str, Any]]
    report_tier: str | None


def run(
    model,
    sessions: Sequence[Session],
    tiers: Sequence[str] = layout.EVALUATION_TIERS,
    batch_size: int = 8,
    window: int = 0,
    max_frames: int = layout.SCORED_FRAMES,
    stimulus_types_dir: str | Path | None = None,
) -> Benchmark:
    """Predict and score every labelled tier of every session (see the module docstring)."""
    members = list(model.members)
    scores: dict[str, dict[str, dict]] = {}
    member_scores: list[dict[str, dict[str, dict]]] = [{} for _ in members]
    ceilings: dict[str, dict[str, Any]] = {}
    unlabelled: dict[str, list[str]] = {}
    first_scored: dict[str, tuple[str, TierPredictions]] = {}  # per mouse, for the report's trace plots
    for session in sessions:
        model.check_session(session)
        types = load_stimulus_types(session, stimulus_types_dir)
        scores[session.name] = {}
        for m in range(len(members)):
            member_scores[m][session.name] = {}
        for tier in tiers:
            if session.trials(tier).size == 0:
                continue
            tp = predict_trials(model, session, tier, batch_size, window, max_frames)
            if not is_labelled(tp):
                unlabelled.setdefault(session.name, []).append(tier)
                continue
            entry = score(tp)
            if tier in BONUS_TIERS and types is not None:
                by_type: dict[str, list[int]] = {}
                for position, trial in enumerate(tp.trials):
                    by_type.setdefault(str(types[trial]), []).append(position)
                entry["stimulus_types"] = {name: score(tp.subset(keep)) for name, keep in sorted(by_type.items())}
            ceiling = _ceiling(session, tier, tp)
            if ceiling is not None:
                ceilings.setdefault(session.name, {})[tier] = ceiling
                entry["ceiling"] = {"kind": ceiling["kind"], "single_trial": float(ceiling["per_neuron"].mean())}
            scores[session.name][tier] = entry
            if len(members) > 1:
                for m in range(len(members)):
                    member_entry = score(tp.member(m))
                    if "ceiling" in entry:  # the same ceiling: it depends on the data only
                        member_entry["ceiling"] = entry["ceiling"]
                    member_scores[m][session.name][tier] = member_entry
            first_scored.setdefault(session.name, (tier, tp))
            logging.info(
                "%s %s: single-trial %.4f (%d trials)",
                session.name,
                tier,
                entry["single_trial_correlation"],
                entry["num_trials"],
            )
    # The report plots the earliest labelled tier (the oracle tier when there is one).
    scored_tiers = [t for t in tiers if any(t in per_tier for per_tier in scores.values())]
    report_tier = scored_tiers[0] if scored_tiers else None
    report_trials = {mouse: tp for mouse, (tier, tp) in first_scored.items() if tier == report_tier}
    results: dict[str, Any] = {
        "model": {
            "workdirs": [str(m.workdir) for m in members],
            "checkpoints": [str(m.checkpoint) for m in members],
            "burn_in": int(model.burn_in),
        },
        "inference": {"window": window or "whole trial", "max_frames": max_frames},
        "mice": _json_ready(scores),
        "overall": pooled(scores),
        "unlabelled": unlabelled,
    }
    fractions = _fractions(results["overall"])
    if fractions:
        results["fraction_of_ceiling"] = fractions
    if len(members) > 1:
        results["members"] = {
            str(member.workdir): {"overall": pooled(ms), "mice": _json_ready(ms)}
            for member, ms in zip(members, member_scores)
        }
    return Benchmark(results, scores, report_trials, ceilings, report_tier)


def _ceiling(session: Session, tier: str, tp: TierPredictions) -> dict[str, Any] | None:
    truth = synthetic_ceiling(session, tier)
    if truth is not None:
        return {"kind": "true (synthetic ground truth)", "per_neuron": truth}
    if metrics.group_repeats(tp.video_ids):
        estimate = metrics.leave_one_out_oracle_np([r.T for r in tp.responses], tp.video_ids)
        return {"kind": "repeat-based estimate (leave-one-out oracle)", "per_neuron": estimate}
    return None


def pooled(scores: dict[str, dict[str, dict]]) -> dict[str, Any]:
    """Per tier (and stimulus type): all neurons of all mice pooled, and the mean over mice."""
    overall: dict[str, Any] = {}
    tiers = sorted({t for per_tier in scores.values() for t in per_tier}, key=_tier_order)
    for tier in tiers:
        entries = [per_tier[tier] for per_tier in scores.values() if tier in per_tier]
        overall[tier] = _pool(entries)
        type_names = sorted({n for e in entries for n in e.get("stimulus_types", {})})
        if type_names:
            overall[tier]["stimulus_types"] = {
                name: _pool([e["stimulus_types"][name] for e in entries if name in e.get("stimulus_types", {})])
                for name in type_names
            }
    return overall


def _pool(entries: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {"num_mice": len(entries), "num_trials": sum(e["num_trials"] for e in entries)}
    for metric, key in (
        ("single_trial_correlation", "per_neuron_single_trial"),
        ("correlation_to_average", "per_neuron_correlation_to_average"),
    ):
        with_metric = [e for e in entries if key in e]
        if with_metric:
            out[metric] = float(np.concatenate([e[key] for e in with_metric]).mean())
            out[f"{metric}_mean_over_mice"] = float(np.mean([e[metric] for e in with_metric]))
    ceilings = [e for e in entries if "ceiling" in e]
    if ceilings and len(ceilings) == len(entries):
        weights = np.array([len(e["per_neuron_single_trial"]) for e in ceilings])
        values = np.array([e["ceiling"]["single_trial"] for e in ceilings])
        out["ceiling_single_trial"] = float((weights * values).sum() / weights.sum())
        out["ceiling_kind"] = ceilings[0]["ceiling"]["kind"]
    return out


def _fractions(overall: dict[str, Any]) -> dict[str, float]:
    return {
        tier: entry["single_trial_correlation"] / entry["ceiling_single_trial"]
        for tier, entry in overall.items()
        if entry.get("ceiling_single_trial")
    }


def _tier_order(tier: str) -> int:
    order = list(layout.EVALUATION_TIERS)
    return order.index(tier) if tier in order else len(order)


def _json_ready(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _json_ready(v) for k, v in tree.items() if not str(k).startswith("per_neuron")}
    return tree


def write_json(results: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(results, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# The terminal table


def format_table(results: dict[str, Any]) -> str:
    """A fixed-width table: one row per mouse × tier (× stimulus type), then the pooled rows and the members."""
    rows: list[tuple[str, str, dict]] = []
    for mouse, per_tier in results["mice"].items():
        for tier, entry in per_tier.items():
            rows.append((mouse, tier, entry))
            rows.extend((mouse, f"  {tier}: {name}", sub) for name, sub in entry.get("stimulus_types", {}).items())
    pooled_name = "ALL (neurons pooled)"
    for tier, entry in results["overall"].items():
        rows.append((pooled_name, tier, entry))
        rows.extend((pooled_name, f"  {tier}: {name}", sub) for name, sub in entry.get("stimulus_types", {}).items())
    for workdir, member in results.get("members", {}).items():
        rows.extend((f"member {Path(workdir).name}", tier, entry) for tier, entry in member["overall"].items())
    name_width = max([len("mouse"), *(len(r[0]) for r in rows)])
    tier_width = max([len("tier"), *(len(r[1]) for r in rows)])

    def number(value: Any) -> str:
        return "" if value is None else f"{value:.4f}"

    header = (
        f"{'mouse':<{name_width}}  {'tier':<{tier_width}}  {'trials':>6}  {'single-trial':>12}  "
        f"{'to-average':>10}  {'ceiling':>7}  {'of ceil.':>8}"
    )
    lines = [header, "-" * len(header)]
    for name, tier, entry in rows:
        ceiling = entry.get("ceiling", {}).get("single_trial", entry.get("ceiling_single_trial"))
        fraction = "" if not ceiling else f"{entry['single_trial_correlation'] / ceiling:.1%}"
        lines.append(
            f"{name:<{name_width}}  {tier:<{tier_width}}  {entry['num_trials']:>6}  "
            f"{number(entry['single_trial_correlation']):>12}  {number(entry.get('correlation_to_average')):>10}  "
            f"{number(ceiling):>7}  {fraction:>8}"
        )
    for mouse, tiers in results.get("unlabelled", {}).items():
        lines.append(f"{mouse}: no labels in {', '.join(tiers)} (withheld test responses), not scored")
    kinds = {e.get("ceiling_kind") for e in results["overall"].values() if e.get("ceiling_kind")}
    if kinds:
        lines.append(f"ceiling: {'; '.join(sorted(kinds))}")
    return "\n".join(lines)
