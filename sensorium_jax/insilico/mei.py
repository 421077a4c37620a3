"""Most exciting inputs: images (a static frame held on the screen) or videos, found by gradient ascent.

For each neuron and each of several random starts, the stimulus ``x`` (contrast units) is improved by
normalised gradient steps on the neuron's mean predicted rate over the last ``output_frames`` frames and projected
back onto the constraint set after every step: the screen's grey-level range, then the norm ball
``‖x‖₂ ≤ rms_contrast · √(pixels)`` (an RMS-contrast budget; the default is the session's natural RMS contrast,
so an MEI has the contrast of a typical clip).

The gradient is *preconditioned* by a Gaussian blur, which suppresses the high-frequency patterns a CNN is
sensitive to but that carry little of its drive; the blur weight decays linearly to zero over the first
``anneal_fraction`` of the steps, so the ascent ends as plain projected gradient ascent whose fixed point is a
true constrained maximum (a blurred gradient alone would converge to the blurred filter, not the optimum). For a
linear neuron ``r = f · x`` the result is exactly ``rms · √pixels · f / ‖f‖``.

Rows (neuron, start) are independent clips of one batch, so all starts of a chunk of neurons are optimised in one
compiled loop.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from sensorium_jax.insilico import stimuli
from sensorium_jax.insilico.twin import DigitalTwin


@dataclasses.dataclass(frozen=True)
class MEIConfig:
    kind: str = "image"  # "image": one frame held for the whole clip; "video": every frame free
    output_frames: int = 10  # predicted frames whose mean rate is maximised
    rms_contrast: float | None = None  # grey levels; None: the session's natural RMS contrast
    steps: int = 200
    step_size: float = 0.5  # first step's length as a fraction of the norm budget (decays to a tenth)
    blur_sigma: float = 1.0  # px; Gaussian blur of the gradient, annealed away
    anneal_fraction: float = 0.6
    starts: int = 3
    start_fraction: float = 0.05  # norm of the random starts relative to the budget
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("image", "video"):
            raise ValueError(f"MEI kind must be 'image' or 'video', got {self.kind!r}")
        if self.starts < 1 or self.steps < 1 or self.output_frames < 1:
            raise ValueError("starts, steps and output_frames must be positive")


@dataclasses.dataclass
class MEIResult:
    neurons: np.ndarray  # (N,) readout indices
    inputs: np.ndarray  # (N, S, H, W) or (N, S, T, H, W) contrast units, every start
    responses: np.ndarray  # (N, S) mean predicted rate over the scored frames
    budget_rms: float
    clip_frames: int

    @property
    def best_start(self) -> np.ndarray:
        return np.argmax(self.responses, axis=1)

    @property
    def best(self) -> np.ndarray:
        """The best start's input per neuron."""
        return self.inputs[np.arange(len(self.neurons)), self.best_start]

    @property
    def best_response(self) -> np.ndarray:
        return self.responses.max(axis=1)

    def diversity(self) -> np.ndarray:
        """``1 −`` mean pairwise cosine similarity of the starts' inputs (0: all starts found the same input;
        NaN with one start)."""
        n, s = self.responses.shape
        if s < 2:
            return np.full(n, np.nan)
        flat = self.inputs.reshape(n, s, -1).astype(np.float64)
        flat = flat / np.maximum(np.linalg.norm(flat, axis=-1, keepdims=True), 1e-20)
        similarity = np.einsum("nsk,ntk->nst", flat, flat)
        upper = np.triu_indices(s, k=1)
        return 1.0 - similarity[:, upper[0], upper[1]].mean(axis=1)

    def response_spread(self) -> np.ndarray:
        """Relative spread of the starts' responses, ``(max − min) / max``."""
        best = self.responses.max(axis=1)
        return np.divide(best - self.responses.min(axis=1), best, out=np.zeros_like(best), where=best > 0)


def _project(x: jax.Array, budget: float, low: float, high: float) -> jax.Array:
    """Onto the screen range, then into the norm ball (scaling towards 0 keeps the range satisfied)."""
    x = jnp.clip(x, low, high)
    norm = jnp.sqrt((x**2).sum(axis=tuple(range(1, x.ndim)), keepdims=True))
    return x * jnp.minimum(1.0, budget / jnp.maximum(norm, 1e-20))


def optimise(twin: DigitalTwin, neurons: np.ndarray, config: MEIConfig = MEIConfig(), batch: int = 32) -> MEIResult:
    """Most exciting inputs of ``neurons``: ``config.starts`` random starts each, ``batch`` rows per compiled loop."""
    neurons = np.asarray(neurons)
    h, w = twin.space.height, twin.space.width
    frames = twin.clip_frames(config.output_frames)
    shape = (h, w) if config.kind == "image" else (frames, h, w)
    rms = twin.space.natural_rms if config.rms_contrast is None else float(config.rms_contrast)
    budget = rms * float(np.sqrt(np.prod(shape)))
    low, high = twin.space.contrast_range
    output = config.output_frames

    def to_video(x: jax.Array) -> jax.Array:
        return jnp.broadcast_to(x[:, None], (x.shape[0], frames, h, w)) if config.kind == "image" else x

    def objective(params, x, neuron_ids):
        rates = twin.respond(params, to_video(x))[:, -output:]  # (B, output, N)
        chosen = jnp.take_along_axis(rates, neuron_ids[:, None, None], axis=2)[..., 0]
        return chosen.mean(axis=1)  # (B,)

    @jax.jit
    def ascend(params, neuron_ids, key):
        start = stimuli.blur(jax.random.normal(key, (neuron_ids.shape[0], *shape)), 2.0)
        # A small start: whatever the gradient never reaches (pixels outside the receptive field, a saturated
        # neuron's flat directions) keeps its starting value, so the start should not fill the budget.
        start = (
            config.start_fraction
            * start
            * budget
            / jnp.sqrt((start**2).sum(axis=tuple(range(1, start.ndim)), keepdims=True))
        )
        x0 = _project(start, budget, low, high)
        anneal = max(1, int(config.anneal_fraction * config.steps))

        def step(x, k):
            grad = jax.grad(lambda v: objective(params, v, neuron_ids).sum())(x)  # rows are independent
            weight = jnp.clip(1.0 - k / anneal, 0.0, 1.0)
            grad = weight * stimuli.blur(grad, config.blur_sigma) + (1.0 - weight) * grad
            norm = jnp.sqrt((grad**2).sum(axis=tuple(range(1, grad.ndim)), keepdims=True))
            size = config.step_size * budget * (1.0 - 0.9 * k / config.steps)
            return _project(x + size * grad / jnp.maximum(norm, 1e-20), budget, low, high), None

        x, _ = jax.lax.scan(step, x0, jnp.arange(config.steps, dtype=jnp.float32))
        return x, objective(params, x, neuron_ids)

    rows = np.repeat(neurons, config.starts)  # (N·S,) neuron of each row, starts consecutive
    batch = max(1, min(batch, len(rows)))
    padded = np.concatenate([rows, np.repeat(rows[-1:], (-len(rows)) % batch)])
    keys = jax.random.split(jax.random.key(config.seed), len(padded) // batch)
    inputs, responses = [], []
    for i, start in enumerate(range(0, len(padded), batch)):
        x, r = ascend(twin.params, jnp.asarray(padded[start : start + batch]), keys[i])
        inputs.append(np.asarray(x))
        responses.append(np.asarray(r))
    count = len(rows)
    inputs_array = np.concatenate(inputs)[:count].reshape(len(neurons), config.starts, *shape)
    responses_array = np.concatenate(responses)[:count].reshape(len(neurons), config.starts)
    return MEIResult(neurons, inputs_array, responses_array, rms, frames)


def best_natural_response(
    twin: DigitalTwin, neurons: np.ndarray, clips: np.ndarray, output_frames: int, batch: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron the highest mean predicted rate over any ``output_frames`` consecutive predicted frames of the
    natural ``clips (C, T, H, W)`` (contrast units), and the clip index where it occurs."""
    rates = twin.predict(np.asarray(clips, np.float32), batch_size=batch)[..., np.asarray(neurons)]  # (C, T', N)
    if rates.shape[1] < output_frames:
        raise ValueError(f"natural clips give {rates.shape[1]} predicted frames, fewer than {output_frames}")
    cumulative = np.cumsum(np.pad(rates, ((0, 0), (1, 0), (0, 0))), axis=1)
    windows = (cumulative[:, output_frames:] - cumulative[:, :-output_frames]) / output_frames  # (C, W, N)
    per_clip = windows.max(axis=1)  # (C, N)
    return per_clip.max(axis=0), per_clip.argmax(axis=0)


def summarise(result: MEIResult, natural_best: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-neuron table columns of an MEI run."""
    out = {
        "mei_response": result.best_response,
        "mei_response_mean_over_starts": result.responses.mean(axis=1),
        "start_spread": result.response_spread(),
        "diversity": result.diversity(),
        "budget_rms_contrast": np.full(len(result.neurons), result.budget_rms),
    }
    if natural_best is not None:
        out["best_natural_response"] = natural_best
        out["ratio_to_best_natural"] = np.divide(
            result.best_response, natural_best, out=np.full_like(natural_best, np.nan), where=natural_best > 0
        )
    return out
