"""A digital twin of one mouse: any model's ``predict_mouse`` as a pure, differentiable function of screen stimuli.

Every in-silico tool works on a :class:`DigitalTwin` and never asks which model it holds. A twin is built from

* a trained run or an ensemble (:func:`twin_from_trained`; the ensemble predicts the mean of its members), or
* any object with ``predict_mouse(mouse, videos, behavior, pupil_center)`` and ``burn_in`` — an NNX module or a
  plain Python object such as the analytic neurons of the tests (:func:`twin_from_module`).

Stimuli are given in **contrast units**: grey levels relative to the blank screen (``raw = grey + contrast``).
The twin's :class:`InputSpace` applies the session's normalisation (``(raw − mean) / std`` per pixel, behaviour
``raw / std``, pupil centre ``(raw − mean) / std``), so a grating of amplitude 30 means 30 grey levels on the
screen whatever the model was trained on. The model's parameters are an argument of :meth:`DigitalTwin.respond`
(not constants closed over), so jitted tools take them as inputs and compile once per shape.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.data import layout
from sensorium_jax.evaluation.loading import ModelDataMismatch


class InsilicoError(ValueError):
    """An in-silico experiment cannot run as asked (bad neuron ids, missing mouse or behaviour)."""


class UnknownNeuronError(InsilicoError):
    """Neuron ids or indices that the twin does not read out."""


class MouseNotInModel(InsilicoError, ModelDataMismatch):
    """The model was not trained on this mouse."""


class BehaviourNotModelled(InsilicoError):
    """The experiment varies behaviour, but the model's prediction does not depend on it."""


BEHAVIOUR_VARIABLES = {"pupil": 0, "running": 1}  # channel of ``behavior`` ([pupil dilation, running speed])


@dataclasses.dataclass(frozen=True)
class InputSpace:
    """Screen units ↔ the model's normalised inputs, and the behaviour the session makes typical.

    Video statistics are per pixel ``(H, W)`` (time-averaged when the files carry a time axis). Behaviour is
    ``[pupil dilation, running speed]``; ``behavior_low``/``behavior_high`` bound sensible sweeps (raw units).
    ``natural_rms`` is the RMS contrast of the session's clips in grey levels (default stimulus contrast);
    ``contrast_range`` what the screen can show (grey levels 0–255 relative to the blank's grey).
    """

    height: int
    width: int
    grey: float
    video_mean: np.ndarray
    video_scale: np.ndarray
    behavior_mean: np.ndarray
    behavior_scale: np.ndarray
    behavior_low: np.ndarray
    behavior_high: np.ndarray
    pupil_mean: np.ndarray
    pupil_scale: np.ndarray
    natural_rms: float
    contrast_range: tuple[float, float] = (-np.inf, np.inf)  # what the screen can show, relative to grey
    frame_rate: float = float(layout.FRAME_RATE_HZ)

    @classmethod
    def identity(
        cls, height: int = layout.VIDEO_HEIGHT, width: int = layout.VIDEO_WIDTH, natural_rms: float = 1.0
    ) -> InputSpace:
        """The model sees the contrast itself; zero behaviour and pupil centre (analytic test models)."""
        zeros2, ones2 = np.zeros(2, np.float32), np.ones(2, np.float32)
        return cls(
            height=height,
            width=width,
            grey=0.0,
            video_mean=np.zeros((height, width), np.float32),
            video_scale=np.ones((height, width), np.float32),
            behavior_mean=zeros2,
            behavior_scale=ones2,
            behavior_low=zeros2 - 2.0,
            behavior_high=ones2 * 2.0,
            pupil_mean=zeros2,
            pupil_scale=ones2,
            natural_rms=natural_rms,
        )

    @classmethod
    def from_session(cls, session) -> InputSpace:
        """The normalisation of a :class:`~sensorium_jax.data.reader.Session` and its behaviour statistics."""
        from sensorium_jax.data.reader import load_small

        used = int(session.valid_lengths.max())

        def per_channel(value: np.ndarray, has_time: bool) -> np.ndarray:
            value = np.asarray(value, np.float64)
            return np.nanmean(value[..., :used], axis=-1) if has_time else value

        def raw_statistic(key: str, stat: str) -> np.ndarray:
            value = np.asarray(load_small(layout.statistics_path(session.path, key, stat), f"{key} {stat}"), float)
            has_time = value.ndim > 0 and value.shape[-1] == session.padded_length and value.ndim >= 2
            return np.broadcast_to(per_channel(value, has_time), (2,)).astype(np.float32)

        video = session.statistics["videos"]
        video_mean = np.broadcast_to(
            per_channel(video.offset, video.has_time), (layout.VIDEO_HEIGHT, layout.VIDEO_WIDTH)
        )
        video_scale = np.broadcast_to(per_channel(video.scale, video.has_time), video_mean.shape)
        behavior = session.statistics["behavior"]
        pupil = session.statistics["pupil_center"]
        behavior_mean = raw_statistic("behavior", "mean")
        behavior_std = 1.0 / np.broadcast_to(per_channel(behavior.scale, behavior.has_time), (2,))
        try:  # min/max are optional in the format; fall back to mean ± 2 std
            low, high = raw_statistic("behavior", "min"), raw_statistic("behavior", "max")
        except (FileNotFoundError, layout.DataFormatError):
            low, high = behavior_mean - 2 * behavior_std, behavior_mean + 2 * behavior_std
        # Sweep the typical range: mean ± 2 std, within what was ever recorded.
        low = np.maximum(low, behavior_mean - 2 * behavior_std)
        high = np.minimum(high, behavior_mean + 2 * behavior_std)
        return cls(
            height=layout.VIDEO_HEIGHT,
            width=layout.VIDEO_WIDTH,
            grey=float(video_mean.mean()),
            video_mean=video_mean.astype(np.float32),
            video_scale=video_scale.astype(np.float32),
            behavior_mean=behavior_mean,
            behavior_scale=np.broadcast_to(per_channel(behavior.scale, behavior.has_time), (2,)).astype(np.float32),
            behavior_low=low.astype(np.float32),
            behavior_high=high.astype(np.float32),
            pupil_mean=np.broadcast_to(per_channel(pupil.offset, pupil.has_time), (2,)).astype(np.float32),
            pupil_scale=np.broadcast_to(per_channel(pupil.scale, pupil.has_time), (2,)).astype(np.float32),
            # the per-pixel std over all training frames: the contrast a typical clip has around the mean grey
            natural_rms=float(np.mean(1.0 / video_scale)),
            contrast_range=(-float(video_mean.mean()), 255.0 - float(video_mean.mean())),
        )

    # Conversions (jnp, traceable)

    def video_to_model(self, contrast: jax.Array) -> jax.Array:
        """``(..., T, H, W)`` grey levels relative to the blank screen → normalised model input."""
        return (self.grey + contrast - self.video_mean) * self.video_scale

    def behavior_to_model(self, raw: jax.Array) -> jax.Array:
        """``(..., 2)`` raw [pupil dilation, running speed] → model units (``raw / std``)."""
        return raw * self.behavior_scale

    def pupil_to_model(self, raw: jax.Array) -> jax.Array:
        return (raw - self.pupil_mean) * self.pupil_scale


@dataclasses.dataclass(frozen=True, eq=False)
class DigitalTwin:
    """One mouse of a model as ``respond(params, contrast (E,T,H,W), behavior, pupil) → (E, T − burn_in, N)``.

    ``apply(params, videos, behavior, pupil_center)`` takes normalised model inputs and returns rates already
    cut to the mouse's ``num_neurons``. ``min_frames``: the shortest clip the model accepts (window models).
    """

    apply: Callable[..., jax.Array]
    params: Any
    burn_in: int
    num_neurons: int
    unit_ids: np.ndarray
    space: InputSpace
    mouse: str = "mouse"
    name: str = "model"
    min_frames: int = 0

    # ------------------------------------------------------------------------------------------------------
    # Inputs

    def clip_frames(self, output_frames: int) -> int:
        """Input length that yields at least ``output_frames`` predicted frames."""
        return max(self.burn_in + output_frames, self.min_frames)

    def default_behavior(self, batch: int, frames: int) -> tuple[jax.Array, jax.Array]:
        """Mean behaviour and the mean eye position, in model units: ``(batch, frames, 2)`` each."""
        behavior = self.space.behavior_to_model(jnp.asarray(self.space.behavior_mean))
        pupil = self.space.pupil_to_model(jnp.asarray(self.space.pupil_mean))
        shape = (batch, frames, 2)
        return jnp.broadcast_to(behavior, shape), jnp.broadcast_to(pupil, shape)

    def respond(
        self,
        params: Any,
        contrast: jax.Array,
        behavior: jax.Array | None = None,
        pupil_center: jax.Array | None = None,
    ) -> jax.Array:
        """Rates ``(E, T − burn_in, N)`` to contrast videos ``(E, T, H, W)`` (traceable; behaviour in model
        units, default: the session mean)."""
        e, t = contrast.shape[:2]
        default_behavior, default_pupil = self.default_behavior(e, t)
        behavior = default_behavior if behavior is None else behavior
        pupil_center = default_pupil if pupil_center is None else pupil_center
        return self.apply(params, self.space.video_to_model(contrast), behavior, pupil_center)

    @functools.cached_property
    def _jitted_respond(self) -> Callable:
        return jax.jit(lambda params, x: self.respond(params, x))

    def predict(self, contrast: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Numpy convenience: rates of every neuron to contrast videos ``(E, T, H, W)``, in fixed-size batches."""
        run = self._jitted_respond
        return map_batches(lambda x: run(self.params, x), np.asarray(contrast, np.float32), batch_size)

    # ------------------------------------------------------------------------------------------------------
    # Neurons and behaviour

    def neuron_indices(self, unit_ids: Sequence[int] | None = None, indices: Sequence[int] | None = None) -> np.ndarray:
        """Readout indices of the requested neurons: by unit id (the benchmark's neuron ids) or by index.

        Neither given: every neuron. Unknown ids or out-of-range indices are an error naming them.
        """
        if unit_ids is not None and indices is not None:
            raise InsilicoError("give neurons either by unit id or by index, not both")
        if unit_ids is not None:
            lookup = {int(u): i for i, u in enumerate(np.asarray(self.unit_ids).reshape(-1))}
            unknown = [int(u) for u in unit_ids if int(u) not in lookup]
            if unknown:
                raise UnknownNeuronError(
                    f"neuron ids {_preview(unknown)} are not read out by {self.name} for mouse {self.mouse!r} "
                    f"({self.num_neurons} neurons, ids {_preview(sorted(lookup))})"
                )
            selected = np.array([lookup[int(u)] for u in unit_ids], np.int64)
        elif indices is not None:
            selected = np.asarray(list(indices), np.int64)
            bad = selected[(selected < 0) | (selected >= self.num_neurons)]
            if bad.size:
                raise UnknownNeuronError(
                    f"neuron indices {_preview(bad.tolist())} are outside 0…{self.num_neurons - 1} "
                    f"({self.name}, mouse {self.mouse!r})"
                )
        else:
            selected = np.arange(self.num_neurons)
        if selected.size == 0:
            raise UnknownNeuronError("no neuron selected")
        return selected

    def behaviour_dependence(self, frames: int | None = None) -> dict[str, bool]:
        """Whether the prediction changes at all when each behaviour variable changes (by one std).

        Exact comparison on purpose: a model that never sees a variable predicts bit-identical rates.
        """
        frames = self.clip_frames(2) if frames is None else frames
        key = jax.random.key(0)
        contrast = jax.random.normal(key, (1, frames, self.space.height, self.space.width)) * self.space.natural_rms
        behavior, pupil = self.default_behavior(1, frames)
        run = jax.jit(lambda p, b: self.respond(p, contrast, b, pupil))
        base = np.asarray(run(self.params, behavior))
        out = {}
        for name, channel in BEHAVIOUR_VARIABLES.items():
            moved = behavior.at[..., channel].add(1.0)  # one std in model units
            out[name] = not np.array_equal(np.asarray(run(self.params, moved)), base)
        return out

    def require_behaviour(self, variables: Sequence[str]) -> None:
        """Raise :class:`BehaviourNotModelled` if the prediction ignores one of ``variables``."""
        unknown = [v for v in variables if v not in BEHAVIOUR_VARIABLES]
        if unknown:
            raise InsilicoError(f"unknown behaviour variables {unknown}; known: {sorted(BEHAVIOUR_VARIABLES)}")
        depends = self.behaviour_dependence()
        missing = [v for v in variables if not depends[v]]
        if missing:
            raise BehaviourNotModelled(
                f"{self.name} (mouse {self.mouse!r}) was not trained with behaviour {missing}: its prediction does "
                "not change with it (e.g. model.behavior_channels=False and no behaviour encoder), so a behaviour "
                "experiment on it has no answer"
            )


def _preview(values: Sequence[int], limit: int = 8) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', …' if len(values) > limit else ''}]"


def map_batches(fn: Callable[[np.ndarray], Any], inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` over the leading axis in batches of exactly ``batch_size`` (the last padded by repetition), so a
    jitted ``fn`` compiles once; outputs concatenated and cut to ``len(inputs)``."""
    count = len(inputs)
    batch_size = max(1, min(batch_size, count))
    outputs = []
    for start in range(0, count, batch_size):
        chunk = inputs[start : start + batch_size]
        if len(chunk) < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - len(chunk), axis=0)])
        outputs.append(np.asarray(fn(chunk)))
    return np.concatenate(outputs)[:count]


# ----------------------------------------------------------------------------------------------------------------
# Builders


def twin_from_module(
    module: Any,
    mouse: int = 0,
    *,
    num_neurons: int | None = None,
    unit_ids: Sequence[int] | None = None,
    space: InputSpace | None = None,
    name: str = "model",
    mouse_name: str | None = None,
) -> DigitalTwin:
    """A twin of any object with ``predict_mouse`` and ``burn_in``.

    NNX modules are split into a graph definition and a state (the state becomes the twin's ``params``); any
    other object is called as is (its arrays become constants of the compiled tools).
    """
    from flax import nnx

    if not hasattr(module, "predict_mouse"):
        raise TypeError(f"{type(module).__name__} has no predict_mouse(mouse, videos, behavior, pupil_center)")
    counts = getattr(getattr(module, "readouts", None), "num_neurons", None)
    if counts is not None and not 0 <= mouse < len(counts):
        raise MouseNotInModel(f"mouse index {mouse} is absent from {name}: it reads out {len(counts)} mice")
    if num_neurons is None:
        if counts is None:
            raise ValueError("num_neurons is needed for a model without readouts.num_neurons")
        num_neurons = int(counts[mouse])
    mouse_index = jnp.int32(mouse)
    if isinstance(module, nnx.Module):
        graphdef, state = nnx.split(module)

        def apply(params, videos, behavior, pupil):
            model = nnx.merge(graphdef, params)
            return model.predict_mouse(mouse_index, videos, behavior, pupil)[..., :num_neurons]

        params = state
    else:

        def apply(params, videos, behavior, pupil):
            del params
            return module.predict_mouse(mouse_index, videos, behavior, pupil)[..., :num_neurons]

        params = None
    return DigitalTwin(
        apply=apply,
        params=params,
        burn_in=int(module.burn_in),
        num_neurons=num_neurons,
        unit_ids=np.arange(num_neurons) if unit_ids is None else np.asarray(unit_ids),
        space=InputSpace.identity() if space is None else space,
        mouse=mouse_name or f"mouse {mouse}",
        name=name,
        min_frames=int(getattr(module, "window_frames", 0) or 0),
    )


def _member_apply(member, mouse: int, num_neurons: int) -> tuple[Callable, Any, int]:
    """One restored run (``loading.TrainedModel``) as ``(apply, params, min_frames)``."""
    from flax import nnx

    from sensorium_jax.training import step as steps

    params, batch_stats = steps.inference_weights(member.state)  # the EMA weights when the run kept them
    graphdef = member.graphdef
    mouse_index = jnp.int32(mouse)

    def apply(weights, videos, behavior, pupil):
        model = nnx.merge(graphdef, *weights)
        return model.predict_mouse(mouse_index, videos, behavior, pupil)[..., :num_neurons]

    window = member.config.model.get("window_frames", 0) if "model" in member.config else 0
    return apply, (params, batch_stats, member.state.constants), int(window or 0)


def twin_from_trained(model: Any, mouse_name: str | None = None, space: InputSpace | None = None) -> DigitalTwin:
    """A twin of a restored run or an :class:`~sensorium_jax.evaluation.loading.Ensemble` (mean of members).

    ``mouse_name`` defaults to the first mouse; ``space`` to the normalisation of that mouse's session folder.
    """
    members = list(model.members)
    names = list(model.mouse_names)
    mouse_name = names[0] if mouse_name is None else mouse_name
    if mouse_name not in names:
        raise MouseNotInModel(f"mouse {mouse_name!r} is absent from the model {model.name} (trained on {names})")
    first = members[0]
    info = first.mice[first.mouse_index(mouse_name)]
    parts = [_member_apply(m, m.mouse_index(mouse_name), info.num_neurons) for m in members]
    burn_ins = [int(m.burn_in) for m in members]
    burn_in = max(burn_ins)

    def apply(params, videos, behavior, pupil):
        t_out = videos.shape[1] - burn_in
        outs = [f(p, videos, behavior, pupil)[:, -t_out:] for (f, _, _), p in zip(parts, params)]
        return sum(outs[1:], outs[0]) / len(outs)

    if space is None:
        from pathlib import Path

        from sensorium_jax.data.reader import Session

        if not Path(info.path).is_dir():
            raise FileNotFoundError(
                f"{info.path}: the session of mouse {mouse_name!r} is needed for its normalisation statistics; "
                "point --data at the session folders"
            )
        space = InputSpace.from_session(Session(info.path, validate="headers"))
    return DigitalTwin(
        apply=apply,
        params=tuple(p for _, p, _ in parts),
        burn_in=burn_in,
        num_neurons=info.num_neurons,
        unit_ids=np.asarray(info.unit_ids),
        space=space,
        mouse=mouse_name,
        name=model.name,
        min_frames=max(w for _, _, w in parts),
    )
