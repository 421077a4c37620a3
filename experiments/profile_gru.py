"""Where a GRU-baseline train step spends its time: the per-frame rotation-equivariant core and the ConvGRU over
time, JAX against the PyTorch peer (neuralpredictors' ``RotationEquivariant2dCore`` + our torch ConvGRU), each
forward + backward timed back to back (needs ``pip install -e ".[bench]"``).

    python -m experiments.profile_gru                        # the gru:cpu core, 12 clips × 40 frames
    python -m experiments.profile_gru --config=full --clips=1 --frames=80

Batch norm runs in inference mode on both sides. The ConvGRU's backward computes its input gradient too (the frame
core upstream needs it). BUILD_NOTES.md, "What bounds the GRU baseline", has the figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from experiments.configs import gru as gru_config
from sensorium_jax.benchmarking.timing import time_calls
from sensorium_jax.models.cores.gru import GRUCore

_CONFIG = flags.DEFINE_enum("config", "cpu", ["cpu", "full"], "gru:cpu or the reference gru core")
_CLIPS = flags.DEFINE_integer("clips", 12, "clips per step (gru:cpu trains 3 mice × 4)")
_FRAMES = flags.DEFINE_integer("frames", 40, "frames per clip")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (XLA uses every core)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per measurement (median reported)")

HEIGHT, WIDTH = 36, 64


def median_seconds(call, repeats: int) -> float:
    """Median of ``repeats`` timed calls after one untimed (compiling) call; ``call`` waits for its own result."""
    return time_calls(call, repeats, warmup=0, sync=lambda result: result).median_s


def main(argv: list[str]) -> None:
    del argv
    import torch

    from sensorium_jax.benchmarking import torch_peers

    torch.set_num_threads(_THREADS.value)
    config = gru_config.get_config("cpu" if _CONFIG.value == "cpu" else None)
    settings = config.model.core.to_dict()
    settings.pop("name")
    constants = torch_peers.constant_channels(config, static=False)
    b, t, repeats = _CLIPS.value, _FRAMES.value, _REPEATS.value
    rng = np.random.default_rng(0)

    core = GRUCore(image_channels=1, constant_channels=constants, rngs=nnx.Rngs(0), **settings)
    frame_graph, frame_params, frame_rest = nnx.split(core.frame_core, nnx.Param, ...)
    gru_graph, gru_params = nnx.split(core.gru)
    frames = jnp.asarray(rng.normal(size=(b * t, HEIGHT, WIDTH)), jnp.float32)
    frame_constants = jnp.asarray(rng.normal(size=(b * t, constants)), jnp.float32) if constants else None

    def frame_features(params):
        return nnx.merge(frame_graph, params, frame_rest)(frames, frame_constants, train=False)

    features = jax.jit(frame_features)(frame_params)
    sequence = features.reshape(b, t, *features.shape[1:])

    def gru_states(params, x):
        return nnx.merge(gru_graph, params)(x)

    frame_grad = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(frame_features(p)))))
    gru_grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.sin(gru_states(p, x))), argnums=(0, 1)))
    mine = {
        "frame core": median_seconds(lambda: jax.block_until_ready(frame_grad(frame_params)), repeats),
        "ConvGRU": median_seconds(lambda: jax.block_until_ready(gru_grad(gru_params, sequence)), repeats),
    }

    np_layers = torch_peers.import_neuralpredictors()
    peer, _, _ = torch_peers.build_core(config, np_layers)
    peer = peer.eval()
    torch_frames = torch.randn(b * t, 1 + constants, HEIGHT, WIDTH)
    with torch.no_grad():
        c, h, w = peer.frame_core(torch_frames[:1]).shape[1:]
    torch_sequence = torch.randn(b, c, t, h, w, requires_grad=True)

    def backward(fn):
        def run():
            peer.zero_grad()
            torch.sin(fn()).sum().backward()

        return run

    theirs = {
        "frame core": median_seconds(backward(lambda: peer.frame_core(torch_frames)), repeats),
        "ConvGRU": median_seconds(backward(lambda: peer.gru(torch_sequence)), repeats),
    }
    print(
        f"gru{':cpu' if _CONFIG.value == 'cpu' else ''} core, {b} clips × {t} frames, frame features "
        f"{tuple(features.shape[1:])}, forward + backward, torch threads {_THREADS.value}; ms (JAX / torch = ratio)"
    )
    for name, seconds in mine.items():
        print(f"  {name}: {1e3 * seconds:.1f} / {1e3 * theirs[name]:.1f} = {seconds / theirs[name]:.2f}")


if __name__ == "__main__":
    app.run(main)
