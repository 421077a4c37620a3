#!/usr/bin/env bash
# GPU checks in one short run (BUILD_NOTES.md, "On a GPU"): the GPU-only tests, which attention path the full
# ViV1T takes, and the full-size benchmark against the PyTorch peers.
#   bash experiments/gpu_check.sh OUT_DIR [CONFIGS [BENCHMARK FLAGS...]]
# e.g. `bash experiments/gpu_check.sh out viv1t --mice=1`: at ten mice the PyTorch ViV1T peer asks for 69 GB for one
# LayerNorm, more than is left beside JAX's share of one 141 GB card (BUILD_NOTES.md, "On a GPU").
# Wheels in .whl/ (if present) are installed first: a machine whose image lacks grain or ml-collections gets them
# without reaching an index.
set -u
out=${1:?usage: gpu_check.sh OUT_DIR [CONFIGS [BENCHMARK FLAGS...]]}
configs=${2:-viv1t,factorized,gru}
shift; shift || true
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
# JAX and the PyTorch peers share one GPU in one process: JAX grows its pool up to 60 %, PyTorch takes the rest.
export XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.6
if compgen -G ".whl/*.whl" >/dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv | tee "$out/gpu.txt"
$py - <<'EOF' 2>&1 | tee -a "$out/gpu.txt"
import importlib
for name in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint", "grain", "chex", "torch", "neuralpredictors"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as error:
        print(name, "missing:", error)
import jax, jax.numpy as jnp
print(jax.devices())
from sensorium_jax.models.cores.viv1t import attention
# Which kernel does the paper core's attention ("auto", bf16) compile to? cuDNN's fused attention shows as a
# custom call named __cudnn$fmha... in the compiled HLO.
for shape in ((4, 116, 11, 48), (8, 435, 11, 48)):
    q = jnp.ones(shape, jnp.bfloat16)
    lengths = jnp.full((shape[0],), shape[1], jnp.int32)
    for kw in (dict(), dict(kv_lengths=lengths)):
        text = jax.jit(lambda q: attention(q, q, q, implementation="auto", **kw)).lower(q).compile().as_text()
        print("attention auto", shape, sorted(kw), "cudnn fmha" if "cudnn$fmha" in text else "XLA (no cuDNN call)")
EOF
# The GPU-only test and the ViV1T / core / step tests on the GPU backend.
timeout 150 $py -m pytest -q tests/test_viv1t.py 2>&1 | tail -n 25 | tee "$out/pytest.txt"
# The competition-size benchmark: ten mice, the configs' own batch and clip length, PyTorch peers on the GPU.
timeout 420 $py -m experiments.benchmark --configs="$configs" --steps=5 --warmup=2 --eval_steps=1 --eval_trials=2 \
  --nopipeline --out="$out/bench_gpu.json" --note="one H200, $(date -u +%F)" "$@" 2>&1 | tee "$out/bench.log" | tail -n 40
