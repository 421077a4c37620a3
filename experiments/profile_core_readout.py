"""Where a full-size factorized train step spends its time: the core and the Gaussian readout, JAX against the
PyTorch peer's modules, each forward + backward timed back to back (needs ``pip install -e ".[bench]"``).

    python -m experiments.profile_core_readout                 # 1 mouse of 7,440 neurons, 2 clips × 80 frames
    python -m experiments.profile_core_readout --clips=1 --threads=1

Batch norm runs in inference mode on both sides (the convolutions are what is being compared). BUILD_NOTES.md,
"What bounds the full-size factorized step", has the figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from sensorium_jax.huge_pages import reexec_with_huge_pages
from sensorium_jax.models.cores.factorized import Factorized3dCore
from sensorium_jax.models.readouts.gaussian import sample_and_project

_CLIPS = flags.DEFINE_integer("clips", 2, "clips per step")
_FRAMES = flags.DEFINE_integer("frames", 80, "frames per clip")
_NEURONS = flags.DEFINE_integer("neurons", 7440, "neurons of the mouse")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (XLA uses every core)")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls per measurement (median reported)")

CORE = dict(hidden_channels=(32, 64, 128), spatial_kernels=(11, 5, 5), temporal_kernels=(11, 5, 5))
HEIGHT, WIDTH = 36, 64


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str]) -> None:
    del argv
    import torch
    import torch.nn.functional as F

    from sensorium_jax.benchmarking.torch_models import TorchFactorized3dCore

    torch.set_num_threads(_THREADS.value)
    b, t, n, repeats = _CLIPS.value, _FRAMES.value, _NEURONS.value, _REPEATS.value
    rng = np.random.default_rng(0)

    core = Factorized3dCore(image_channels=1, constant_channels=2, rngs=nnx.Rngs(0), **CORE)
    graphdef, params, rest = nnx.split(core, nnx.Param, ...)
    video = jnp.asarray(rng.normal(size=(b, t, HEIGHT, WIDTH)), jnp.float32)
    behavior = jnp.asarray(rng.normal(size=(b, t, 2)), jnp.float32)
    features = jax.jit(lambda p: nnx.merge(graphdef, p, rest)(video, behavior, train=False))
    core_loss = lambda p: jnp.sum(features(p) ** 2)
    core_grad = jax.jit(jax.grad(core_loss))
    jax_forward = median_seconds(lambda: jax.block_until_ready(features(params)), repeats)
    jax_backward = median_seconds(lambda: jax.block_until_ready(core_grad(params)), repeats)

    torch_core = TorchFactorized3dCore(3, **CORE).eval()
    torch_video = torch.randn(b, 3, t, HEIGHT, WIDTH)

    def torch_forward_only():
        with torch.no_grad():
            torch_core(torch_video)

    def torch_forward_backward():
        torch_core.zero_grad()
        torch_core(torch_video).pow(2).sum().backward()

    torch_forward = median_seconds(torch_forward_only, repeats)
    torch_backward = median_seconds(torch_forward_backward, repeats)

    sampled = features(params)  # (B, T', H', W', C)
    s, (h, w, c) = b * sampled.shape[1], sampled.shape[2:]
    feats = jnp.asarray(rng.normal(size=(s, h, w, c)), jnp.float32)
    grid = jnp.asarray(rng.uniform(-0.9, 0.9, (s, n, 2)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(c, n)) / c, jnp.float32)
    readout_loss = lambda f, g, wt: jnp.sum(jnp.sin(sample_and_project(f, g, wt)))
    readout_grad = jax.jit(jax.grad(readout_loss, argnums=(0, 1, 2)))
    jax_readout = median_seconds(lambda: jax.block_until_ready(readout_grad(feats, grid, weights)), repeats)

    torch_feats = torch.randn(s, c, h, w, requires_grad=True)
    torch_grid = torch.empty(s, 1, n, 2).uniform_(-0.9, 0.9).requires_grad_(True)
    torch_weights = (torch.randn(c, n) / c).requires_grad_(True)

    def torch_readout():
        picked = F.grid_sample(torch_feats, torch_grid, align_corners=True)[:, :, 0, :]  # (S, C, N)
        torch.sin((picked * torch_weights[None]).sum(1)).sum().backward()

    torch_read = median_seconds(torch_readout, repeats)
    print(f"{b} clips × {t} frames, {n} neurons, torch threads {_THREADS.value}; seconds (JAX / torch = ratio)")
    rows = [
        ("core forward", jax_forward, torch_forward),
        ("core forward + backward", jax_backward, torch_backward),
        (f"readout forward + backward ({s} samples × {n} neurons × {c} channels)", jax_readout, torch_read),
    ]
    for name, mine, theirs in rows:
        print(f"  {name}: {mine:.2f} / {theirs:.2f} = {mine / theirs:.2f}")


if __name__ == "__main__":
    reexec_with_huge_pages()  # glibc reads its tunables only at start-up
    app.run(main)
