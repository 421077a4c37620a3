"""DwiseNeuro, the SENSORIUM 2023 first-place model (``winning_models.md`` §1; ``L:configs/true_batch_001.py``).

``--config=dwiseneuro``: the reference network (stem 64, nine inverted-residual blocks 64/64/64/128/128/128/256/256/
256 with expansion 7, cortex 1024/2048/4096 in 2 groups, grouped readouts, Softplus β 0.07; 170.66 M parameters
with the ten competition mice, 161.6 M of them readouts), 16-frame windows at step 2, AdamW lr 2.4e-3 and weight
decay 0.05, 21 epochs, the reference's every-frame sliding-window inference.

Batching: the reference draws 32 windows per step from mice mixed uniformly; one step here is a sub-batch of
every mouse (the shared train step). A 32-frame clip holds two reference windows (even and odd frames), so 2 clips
per mouse × 10 mice = 40 windows per step, and an epoch of the reference's 72 k windows is 1,800 steps.

The reference recipe through the shared switches (``experiments/configs/common.py``): the per-iteration schedule
(3 epochs of linear warm-up from 0, then 18 epochs of cosine decay to 2.4e-5), EMA of parameters *and* batch
statistics (decay 0.999; the EMA weights are validated, kept and evaluated), CutMix (α 1, p 0.5, targets and
behaviour mixed by area). Not reproduced: the reference's fold-wise distillation (a second stage trained on an
ensemble's predictions). Other differences that belong to the shared code: the data are normalised by the shared
reader (the reference feeds raw values and only applies ReLU to the targets), each mouse's Poisson loss is scaled
by √(trials / batch size) instead of 1 / batch size per window, and CutMix's partner is a random clip of the same
mouse in the batch (the reference: the next sample).

``--config=dwiseneuro:cpu``: the same structure, narrow and shallow, for 2 CPU cores and the synthetic dataset.
"""

import ml_collections

from experiments.configs.common import base_config, parse_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_variant(arg)
    c = base_config()
    c.model = ml_collections.ConfigDict()
    c.model.kind = "dwiseneuro"
    c.model.core = ml_collections.ConfigDict(
        dict(
            name="dwiseneuro",
            stem_channels=64,
            block_channels=(64, 64, 64, 128, 128, 128, 256, 256, 256),
            block_strides=(2, 1, 1, 1, 2, 1, 1, 2, 1),
            expansion=7,  # 6 in the distillation stage
            se_reduction=32,
            spatial_kernel=3,
            temporal_kernel=5,
            drop_path=0.1,  # block i: 0.1 · i / 9
            compute_dtype="bfloat16",  # the reference trains with fp16 autocast
            depthwise="auto",  # shifted multiply-adds on CPU, XLA's grouped convolution elsewhere
        )
    )
    c.model.cortex = ml_collections.ConfigDict(dict(channels=(1024, 2048, 4096), groups=2, drop_path=0.1))
    # bias_init "zeros": the reference's conv init; "mean_response": start at each neuron's mean rate
    c.model.readout = ml_collections.ConfigDict(dict(groups=2, dropout=0.4, bias_init="zeros"))
    c.model.softplus_beta = 0.07
    # pool: average p × p pixel blocks of the padded frames (1 = the reference; CPU variants only)
    c.model.window = ml_collections.ConfigDict(dict(frames=16, step=2, padded_size=(64, 64), pool=1))
    # end_step 1: a window ends at every frame (the reference); window_batch: windows per inference pass
    c.model.inference = ml_collections.ConfigDict(dict(end_step=1, window_batch=64))

    c.data.batch_size = 2  # clips per mouse; 2 windows per 32-frame clip
    c.data.clip_frames = 32
    c.optim.lr = 2.4e-3  # 3e-4 · 32 / 4
    c.optim.weight_decay = 0.05
    c.train.max_epochs = 21
    c.train.steps_per_epoch = 1800
    c.schedule.kind = "warmup_cosine"
    c.schedule.warmup_epochs = 3.0
    c.schedule.warmup_start = 0.0
    c.schedule.hold_epochs = 0.0
    c.schedule.final_lr_fraction = 0.01  # 2.4e-5 / 2.4e-3
    c.train.ema_decay = 0.999
    c.train.cutmix_prob = 0.5
    c.train.cutmix_alpha = 1.0
    c.eval.batch_size = 4

    if "cpu" in variant:
        # About a second per step on 2 CPU cores (3 synthetic mice × 2 clips × 2 windows, 1.2 s of CPU time per
        # step): the padded 64 × 64 frames averaged to 32 × 32, a narrow stem, four blocks that reach 8 × 8 after
        # two stride-2 steps, expansion 2, a 64/128 cortex, float32. The readout biases start at each neuron's
        # mean rate: with β = 0.07 a zero bias starts every rate at 9.9, far above the normalised responses, and
        # a short run would spend its steps bringing them down. Inference keeps every 8th pair of window ends,
        # which still covers every frame (the reference: every end, ``end_step`` 1).
        c.model.core.update(
            stem_channels=8,
            block_channels=(8, 16, 16, 32),
            block_strides=(1, 2, 1, 2),
            expansion=2,
            se_reduction=4,
            compute_dtype="float32",
        )
        c.model.cortex.channels = (64, 128)
        c.model.window.pool = 2
        c.model.readout.update(dropout=0.1, bias_init="mean_response")
        c.model.inference.update(end_step=8, window_batch=64)
        c.data.batch_size = 2
        c.optim.lr = 3e-3
        c.train.max_epochs = 14
        c.train.steps_per_epoch = 50
        # The recipe scaled to a 700-step run: 1 warm-up epoch, an EMA with a ~100-step memory (0.999 averages over
        # 1,000 steps, longer than the run), and no CutMix — a regulariser for long runs that halves what a short
        # run learns from each clip.
        c.schedule.warmup_epochs = 1.0
        c.train.ema_decay = 0.99
        c.train.cutmix_prob = 0.0
        c.eval.batch_size = 8
    if "epochs" in variant:
        c.train.max_epochs = int(variant["epochs"])
    return c
