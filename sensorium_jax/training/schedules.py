"""Learning-rate schedules: warm-up + cosine decay inside the jitted step, reduce-on-plateau on the host.

``config.schedule.kind``:

* ``"plateau"`` (default; the SENSORIUM 2023 baselines and ViV1T): a constant learning rate that the host-side
  :class:`PlateauSchedule` multiplies by ``factor`` after ``patience`` evaluations without improvement, restoring
  the best state each time, and stops at the ``lr_decay_steps``-th plateau.
* ``"warmup_cosine"`` (DwiseNeuro, Dynamic-V1FM): a linear warm-up from ``warmup_start`` × lr to lr, an optional
  flat phase (``hold_epochs``), then a cosine from lr down to ``final_lr_fraction`` × lr at the last step of
  ``max_epochs``, updated every optimiser step. It is a pure function of the step counter evaluated inside the
  jitted step, so it never recompiles. Validation still picks the best checkpoint each epoch, but the plateau
  rule neither decays nor stops the run.

Both multiply every update (AdamW's decoupled weight decay included, as changing torch's lr does) through the
state's ``lr_scale`` and this factor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

SCHEDULE_KINDS = ("plateau", "warmup_cosine")


def schedule_kind(config: ml_collections.ConfigDict) -> str:
    """``config.schedule.kind`` (configs without the field use the plateau schedule)."""
    kind = config.get("kind", "plateau")
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"config.schedule.kind must be one of {SCHEDULE_KINDS}, got {kind!r}")
    return kind


def warmup_cosine(
    total_steps: int,
    warmup_steps: int = 0,
    hold_steps: int = 0,
    warmup_start: float = 0.0,
    final_fraction: float = 0.0,
) -> Callable[[jax.Array], jax.Array]:
    """``factor(step)`` for the update applied at optimiser step ``step`` (0 for the first update).

    * warm-up, ``step < W``: ``start + (1 − start) · step / W``;
    * hold, ``W ≤ step < W + H``: 1;
    * cosine, ``c = step − W − H`` over ``C = total − W − H`` steps:
      ``final + (1 − final) · ½ (1 + cos(π · min(c, C) / C))``, so the last step of the run is at ``final``
      and any step beyond stays there.
    """
    if total_steps <= 0:
        raise ValueError(f"the cosine schedule needs a positive number of steps, got {total_steps}")
    if warmup_steps < 0 or hold_steps < 0 or warmup_steps + hold_steps > total_steps:
        raise ValueError(
            f"warm-up ({warmup_steps}) + hold ({hold_steps}) steps must fit in the run's {total_steps} steps"
        )
    cosine_steps = max(total_steps - warmup_steps - hold_steps, 1)

    def factor(step: jax.Array) -> jax.Array:
        step = jnp.asarray(step, jnp.float32)
        warm = warmup_start + (1.0 - warmup_start) * step / max(warmup_steps, 1)
        progress = jnp.clip(step - warmup_steps - hold_steps, 0.0, cosine_steps) / cosine_steps
        cosine = final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
        return jnp.where(step < warmup_steps, warm, jnp.where(step < warmup_steps + hold_steps, 1.0, cosine))

    return factor


def make_lr_schedule(
    config: ml_collections.ConfigDict, steps_per_epoch: int, max_epochs: int
) -> Callable[[jax.Array], jax.Array] | None:
    """The in-step lr factor of ``config`` (``config.schedule``), or ``None`` for the plateau schedule.

    Warm-up and hold lengths are given in epochs (``warmup_epochs``, ``hold_epochs``, fractions allowed) or, when
    ``warmup_steps`` is set, the warm-up in optimiser steps.
    """
    if schedule_kind(config) == "plateau":
        return None
    warmup_steps = config.get("warmup_steps", 0) or round(config.get("warmup_epochs", 0.0) * steps_per_epoch)
    return warmup_cosine(
        total_steps=steps_per_epoch * max_epochs,
        warmup_steps=int(warmup_steps),
        hold_steps=round(config.get("hold_epochs", 0.0) * steps_per_epoch),
        warmup_start=config.get("warmup_start", 0.0),
        final_fraction=config.get("final_lr_fraction", 0.0),
    )


class PlateauSchedule:
    """Reduce-on-plateau with restore-best and a stop rule; its state is a JSON-able dict (checkpointed).

    ``patience`` evaluations without an improvement larger than ``tolerance`` → restore the best state and
    multiply the lr by ``factor`` (not below ``min_lr``); the ``lr_decay_steps``-th such plateau stops the run.

    ``reset_decays_on_improvement`` chooses between the two references. neuralpredictors' ``early_stopping``
    (the SENSORIUM baselines) counts plateaus over the whole run (``for repeat in range(lr_decay_steps)``:
    an improvement resets only the patience counter); ViV1T's ``Scheduler.step`` also sets ``num_reduce = 0``
    on every improvement, so only plateaus since the last improvement count towards the stop.

    With ``decay=False`` (the warm-up + cosine schedule owns the lr) it only tracks the best evaluation.
    """

    def __init__(self, config: ml_collections.ConfigDict, base_lr: float, decay: bool = True):
        self.patience = config.patience
        self.factor = config.factor
        self.tolerance = config.tolerance
        self.decay_steps = config.lr_decay_steps
        self.min_scale = config.min_lr / base_lr
        self.reset_decays = bool(config.get("reset_decays_on_improvement", False))
        self.decay = decay

    @staticmethod
    def initial() -> dict:
        return {"best": -math.inf, "best_epoch": -1, "bad_evaluations": 0, "decays": 0, "stopped": False}

    def update(self, loop: dict, objective: float, epoch: int, lr_scale: float) -> tuple[str, float]:
        """Returns the action ('improved', 'wait', 'decay', 'stop') and the new lr scale."""
        if objective > loop["best"] + self.tolerance:
            loop.update(best=objective, best_epoch=epoch, bad_evaluations=0)
            if self.reset_decays:
                loop["decays"] = 0
            return "improved", lr_scale
        if not self.decay:
            return "wait", lr_scale
        loop["bad_evaluations"] += 1
        if loop["bad_evaluations"] < self.patience:
            return "wait", lr_scale
        loop["bad_evaluations"] = 0
        loop["decays"] += 1
        if loop["decays"] >= self.decay_steps:
            loop["stopped"] = True
            return "stop", lr_scale
        return "decay", max(lr_scale * self.factor, self.min_scale)
