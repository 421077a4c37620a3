"""Where a train step of the ViV1T or the GRU baseline spends its time, part by part, JAX against the PyTorch
peer (``benchmarking/torch_models.py``, neuralpredictors for the GRU's frame core), each forward + backward timed
back to back (needs ``pip install -e ".[bench]"``). ``profile_core_readout`` does the same for the factorized core.

    python -m experiments.profile_parts --model=viv1t        # viv1t:cpu: tokenizer, spatial and temporal blocks
    python -m experiments.profile_parts --model=gru          # gru:cpu: per-frame core, ConvGRU over time
    python -m experiments.profile_parts --model=viv1t --config=full --clips=1 --frames=80

Dropout is off and batch norm in inference mode on both sides (what is compared is the arithmetic). Every part's
backward computes its input gradient too (the part upstream needs it), except the first part's (the video needs
none). BUILD_NOTES.md, "What bounds ViV1T and the GRU baseline", has the figures.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from experiments.configs import gru as gru_config
from experiments.configs import viv1t as viv1t_config
from sensorium_jax.benchmarking.timing import time_calls
from sensorium_jax.huge_pages import reexec_with_huge_pages
from sensorium_jax.models.cores.gru import GRUCore
from sensorium_jax.models.cores.viv1t import ViV1TCore

_MODEL = flags.DEFINE_enum("model", "viv1t", ["viv1t", "gru"], "which core to take apart")
_CONFIG = flags.DEFINE_enum("config", "cpu", ["cpu", "full"], "the :cpu variant or the reference core")
_CLIPS = flags.DEFINE_integer("clips", 12, "clips per step (the :cpu configs train 3 mice × 4)")
_FRAMES = flags.DEFINE_integer("frames", 0, "frames per clip (0: the :cpu config's, 48 for viv1t, 40 for gru)")
_ATTENTION = flags.DEFINE_enum("attention", "auto", ["auto", "xla"], "viv1t: attention implementation (auto: CPU path)")
_THREADS = flags.DEFINE_integer("threads", 2, "torch threads (XLA uses every core)")
_REPEATS = flags.DEFINE_integer("repeats", 5, "timed calls per measurement (median reported)")

HEIGHT, WIDTH = 36, 64
DEFAULT_FRAMES = {"viv1t": 48, "gru": 40}


def median_seconds(call, repeats: int) -> float:
    """Median of ``repeats`` timed calls after one untimed (compiling) call; ``call`` waits for its own result."""
    return time_calls(call, repeats, warmup=0, sync=lambda result: result).median_s


def torch_backward(module, forward):
    """A call that runs ``forward()`` and back-propagates ``sum(sin(output))`` into ``module``'s parameters."""
    import torch

    def run():
        module.zero_grad()
        torch.sin(forward()).sum().backward()

    return run


def variant() -> str | None:
    return "cpu" if _CONFIG.value == "cpu" else None


def viv1t_settings() -> dict:
    config = viv1t_config.get_config(variant()).model.core.to_dict()
    config.pop("name")
    # float32 and no remat on both sides; the attention as training runs it ("auto") unless --attention says otherwise
    config.update(compute_dtype="float32", remat=False, attention_implementation=_ATTENTION.value)
    return config


def viv1t_jax_parts(settings: dict, b: int, t: int) -> dict[str, float]:
    rng = np.random.default_rng(0)
    core = ViV1TCore(image_channels=1, constant_channels=0, rngs=nnx.Rngs(0), **settings)
    video = jnp.asarray(rng.normal(size=(b, t, HEIGHT, WIDTH, 1)), jnp.float32)
    tokenizer_graph, tokenizer_params = nnx.split(core.tokenizer)

    def tokens_of(params):
        return nnx.merge(tokenizer_graph, params)(video, None, None)

    tokens = jax.jit(tokens_of)(tokenizer_params)
    n, t_out, p, d = tokens.shape
    block_fn = core.block_fn(causal=False, train=False)  # dropout off; remat off in viv1t_settings
    block = lambda params, h: block_fn(params, h, None, None)

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


def viv1t_torch_parts(settings: dict, b: int, t: int) -> dict[str, float]:
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

    backward = lambda forward: torch_backward(core, forward)
    return {
        "tokenizer": median_seconds(backward(tokens_of), _REPEATS.value),
        "spatial blocks": median_seconds(backward(lambda: stage(core.spatial_blocks, spatial_in)), _REPEATS.value),
        "temporal blocks": median_seconds(backward(lambda: stage(core.temporal_blocks, temporal_in)), _REPEATS.value),
    }


def gru_parts(b: int, t: int) -> tuple[str, dict[str, float], dict[str, float]]:
    """(description, JAX seconds, PyTorch seconds) of the per-frame core and the ConvGRU."""
    import torch

    from sensorium_jax.benchmarking import torch_peers

    torch.set_num_threads(_THREADS.value)
    config = gru_config.get_config(variant())
    settings = config.model.core.to_dict()
    settings.pop("name")
    constants = torch_peers.constant_channels(config, static=False)
    repeats = _REPEATS.value
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

    backward = lambda forward: torch_backward(peer, forward)
    theirs = {
        "frame core": median_seconds(backward(lambda: peer.frame_core(torch_frames)), repeats),
        "ConvGRU": median_seconds(backward(lambda: peer.gru(torch_sequence)), repeats),
    }
    description = f"{b} clips × {t} frames, frame features {tuple(features.shape[1:])}"
    return description, mine, theirs


def main(argv: list[str]) -> None:
    del argv
    b, t = _CLIPS.value, _FRAMES.value or DEFAULT_FRAMES[_MODEL.value]
    if _MODEL.value == "viv1t":
        settings = viv1t_settings()
        mine = viv1t_jax_parts(settings, b, t)
        description, theirs = mine.pop("shape"), viv1t_torch_parts(settings, b, t)
    else:
        description, mine, theirs = gru_parts(b, t)
    print(
        f"{_MODEL.value}{':cpu' if variant() else ''} core, {description}, forward + backward, "
        f"torch threads {_THREADS.value}; ms (JAX / torch = ratio)"
    )
    for name, seconds in mine.items():
        print(f"  {name}: {1e3 * seconds:.1f} / {1e3 * theirs[name]:.1f} = {seconds / theirs[name]:.2f}")


if __name__ == "__main__":
    reexec_with_huge_pages()  # glibc reads its tunables only at start-up
    app.run(main)
