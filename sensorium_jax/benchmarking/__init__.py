"""Speed and memory measurements behind ``experiments/benchmark.py``: the jitted train step per config, the input
pipeline on its own, and optional PyTorch peers of the same shapes (``pip install .[bench]``).

One job per module: :mod:`.memory` (peak RSS / GPU bytes), :mod:`.fake_inputs` (mice and batches of realistic
sizes), :mod:`.timing` (the JAX train and inference steps), :mod:`.pipeline_bench` (Grain clips/s),
:mod:`.torch_models` and :mod:`.torch_peers` (PyTorch), :mod:`.report` (table and JSON).
"""
