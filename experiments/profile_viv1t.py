"""Where a ViV1T train step spends its time: tokenizer, spatial and temporal transformer stages, JAX against the
PyTorch peer (``benchmarking/torch_models.py``) with the same weights' shapes, each forward + backward timed back to
back (needs ``pip install -e ".[bench]"``).

    python -m experiments.profile_viv1t                      # the viv1t:cpu core, 12 clips × 48 frames
    python -m experiments.profile_viv1t --config=full --clips=1 --frames=80

Dropout is off on both sides (what is compared is the arithmetic). Every stage's backward pass computes its input
gradient too, except the tokenizer's (the video needs none). BUILD_NOTES.md, "What bounds ViV1T", has the figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from experiments.configs import viv1t as viv1t_config
from sensorium_jax.benchmarking.timing import time_calls
from sensorium_jax.models.cores.viv1t import ViV1TCore, parallel_block

_CONFIG = flags.DEFINE_enum("config", "cpu", ["cpu", "full"], "viv1t:cpu or the paper's viv1t core")
_CLIPS = flags.DEFINE_integer("clips", 12, "clips per step (viv1t:cpu trains 3 mice × 4)")
_FRAMES = flags.DEFINE_integer("frames", 48, "frames per clip")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (XLA uses every core)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per measurement (median reported)")

HEIGHT, WIDTH = 36, 64


def median_seconds(call, repeats: int) -> float:
    """Median of ``repeats`` timed calls after one untimed (compiling) call; ``call`` waits for its own result."""
    return time_calls(call, repeats, warmup=0, sync=lambda result: result).median_s


def core_settings() -> dict:
    config = viv1t_config.get_config("cpu" if _CONFIG.value == "cpu" else None).model.core.to_dict()
    config.pop("name")
    config.update(compute_dtype="float32", remat=False, attention_implementation="xla")  # a like-for-like CPU run
    return config


def jax_stages(settings: dict, b: int, t: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    core = ViV1TCore(image_channels=1, constant_channels=0, rngs=nnx.Rngs(0), **settings)
    video = jnp.asarray(rng.normal(size=(b, t, HEIGHT, WIDTH, 1)), jnp.float32)
    tokenizer_graph, tokenizer_params = nnx.split(core.tokenizer)

    def tokens_of(params):
        return nnx.merge(tokenizer_graph, params)(video, None, None)

    tokens = jax.jit(tokens_of)(tokenizer_params)
    n, t_out, p, d = tokens.shape
    block = lambda params, h: parallel_block(
        params,
        h,
        None,
        None,
        num_heads=core.num_heads,
        head_dim=core.head_dim,
        compute_dtype=jnp.float32,
        causal=False,
        implementation="xla",
        attention_dropout=0.0,
        ff_dropout=0.0,
        drop_path_rate=0.0,
    )

    def stage(blocks, h):
        for params in blocks:
            h = block(params, h)
        return h

    spatial = [layer.params() for layer in core.spatial_blocks]
    temporal = [layer.params() for layer in core.temporal_blocks]
    spatial_in = tokens.reshape(n * t_out, p, d)
    temporal_in = tokens.transpose(0, 2, 1, 3).reshape(n * p, t_out, d)
    loss = lambda fn: lambda *args: jnp.sum(jnp.sin(fn(*args)))
    timed = {
        "tokenizer": jax.jit(jax.grad(loss(tokens_of))),
        "spatial blocks": jax.jit(jax.grad(loss(stage), argnums=(0, 1))),
        "temporal blocks": jax.jit(jax.grad(loss(stage), argnums=(0, 1))),
    }
    arguments = {
        "tokenizer": (tokenizer_params,),
        "spatial blocks": (spatial, spatial_in),
        "temporal blocks": (temporal, temporal_in),
    }
    out = {}
    for name, fn in timed.items():
        out[name] = median_seconds(lambda fn=fn, a=arguments[name]: jax.block_until_ready(fn(*a)), _REPEATS.value)
    out["shape"] = f"{n} clips × {t_out} tokens × {p} patches × {d}"
    return out


def torch_stages(settings: dict, b: int, t: int) -> dict[str, float]:
    import torch

    from sensorium_jax.benchmarking.torch_models import TorchViV1TCore

    torch.set_num_threads(_THREADS.value)
    core = TorchViV1TCore(1, **settings).eval()
    video = torch.randn(b, 1, t, HEIGHT, WIDTH)
    pt, ps, s = core.temporal_patch, core.spatial_patch, core.spatial_stride

    def tokens_of():
        patches = video.unfold(2, pt, 1).unfold(3, ps, s).unfold(4, ps, s)
        t_out = patches.shape[2]
        patches = patches.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(b, t_out, core.grid[0] * core.grid[1], -1)
        tokens = core.norm(core.proj(core.patch_norm(patches)))
        return tokens + core.spatial_pos[None, None] + core.temporal_pos[:t_out][None, :, None]

    with torch.no_grad():
        n, t_out, p, d = tokens_of().shape
    spatial_in = torch.randn(n * t_out, p, d, requires_grad=True)
    temporal_in = torch.randn(n * p, t_out, d, requires_grad=True)

    def stage(blocks, h):
        for layer in blocks:
            h = layer(h)
        return h

    def backward(fn):
        def run():
            core.zero_grad()
            torch.sin(fn()).sum().backward()

        return run

    return {
        "tokenizer": median_seconds(backward(tokens_of), _REPEATS.value),
        "spatial blocks": median_seconds(backward(lambda: stage(core.spatial_blocks, spatial_in)), _REPEATS.value),
        "temporal blocks": median_seconds(backward(lambda: stage(core.temporal_blocks, temporal_in)), _REPEATS.value),
    }


def main(argv: list[str]) -> None:
    del argv
    settings = core_settings()
    b, t = _CLIPS.value, _FRAMES.value
    mine = jax_stages(settings, b, t)
    theirs = torch_stages(settings, b, t)
    print(
        f"viv1t{':cpu' if _CONFIG.value == 'cpu' else ''} core, {mine.pop('shape')}, forward + backward, "
        f"torch threads {_THREADS.value}; ms (JAX / torch = ratio)"
    )
    for name, seconds in mine.items():
        print(f"  {name}: {1e3 * seconds:.1f} / {1e3 * theirs[name]:.1f} = {seconds / theirs[name]:.2f}")


if __name__ == "__main__":
    app.run(main)
