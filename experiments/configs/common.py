"""Defaults shared by every config: data, optimiser, schedule, evaluation. Model configs override pieces."""

from __future__ import annotations

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.num_devices = 0  # 0: every device (all hosts)
    c.task = "video"  # "video" (SENSORIUM 2023) or "static" (SENSORIUM 2022 images; see configs/static_baseline.py)

    c.data = ml_collections.ConfigDict()
    c.data.paths = ""  # comma-separated session folders or globs; empty: the built-in synthetic dataset
    c.data.cache_dir = "~/.cache/sensorium_jax"
    c.data.synthetic = ml_collections.ConfigDict()  # SyntheticConfig overrides (defaults when empty)
    c.data.validate = "full"  # or "headers" (skips the NaN scan of every frame on the full competition data)
    c.data.batch_size = 8  # clips per mouse per optimiser step
    c.data.clip_frames = 80
    c.data.num_workers = 0  # Grain worker processes (0: threads in this process)
    c.data.prefetch = 2
    # "all": every step holds a sub-batch of every mouse (the SENSORIUM baselines, ViV1T); "one": every step holds
    # batch_size clips of one mouse, mice cycled round-robin (Dynamic-V1FM's LongCycler), one compiled step.
    c.data.mouse_sampling = "all"

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 0.005
    c.optim.weight_decay = 0.01  # torch AdamW's default, which the reference leaves in place
    c.optim.core_lr = 0.0  # 0: same as lr
    c.optim.core_weight_decay = None
    c.optim.shifter_lr = 0.0  # 0: same as lr (the readouts')
    c.optim.position_lr = 0.0  # 0: same as lr (the readouts'); the readout positions' own lr (training/step.py)
    c.optim.decay_positions = True  # False: no weight decay on the readout positions (training/step.py)
    c.optim.clip_grad_norm = 0.0
    c.optim.accumulate_steps = 1  # > 1: the batch is split into this many micro-batches, gradients summed

    c.train = ml_collections.ConfigDict()
    c.train.max_epochs = 200
    c.train.steps_per_epoch = 0  # 0: one pass over the largest mouse's train trials
    c.train.log_every = 10
    c.train.validate_every = 1  # epochs between validations (the last epoch is always validated)
    c.train.time_budget_minutes = 0.0  # > 0: stop before an epoch that would end past this budget
    c.train.time_budget_clock = "wall"  # or "cpu": the process's CPU time (same compute on a shared machine)
    c.train.correlation_weight = 0.0
    c.train.loss_last_frames = 0
    c.train.ema_decay = 0.0  # > 0: EMA of parameters and BN statistics, validated/saved/evaluated (DwiseNeuro 0.999)
    c.train.cutmix_prob = 0.0  # > 0: CutMix per clip with this probability (DwiseNeuro 0.5)
    c.train.cutmix_alpha = 1.0  # box area fraction ~ Beta(alpha, alpha)
    c.train.cutmix_behavior = "mix"  # "mix": behaviour/pupil mixed by the box area like the targets; "keep"

    c.schedule = ml_collections.ConfigDict()
    c.schedule.kind = "plateau"  # or "warmup_cosine" (DwiseNeuro, Dynamic-V1FM); see sensorium_jax/training/schedules
    c.schedule.patience = 5
    c.schedule.factor = 0.3
    c.schedule.tolerance = 1e-6
    c.schedule.min_lr = 1e-4
    c.schedule.lr_decay_steps = 4
    c.schedule.reset_decays_on_improvement = False  # True: ViV1T's rule; False: neuralpredictors' (whole run)
    # warmup_cosine: linear warm-up from warmup_start × lr, hold at lr, cosine to final_lr_fraction × lr at the end
    c.schedule.warmup_epochs = 0.0
    c.schedule.warmup_steps = 0  # > 0: overrides warmup_epochs
    c.schedule.warmup_start = 0.0
    c.schedule.hold_epochs = 0.0
    c.schedule.final_lr_fraction = 0.01

    c.eval = ml_collections.ConfigDict()
    c.eval.batch_size = 8
    return c


def start_readout_at_receptive_fields(c: ml_collections.ConfigDict) -> None:
    """The ``rf_init`` variant of any core that reports where its feature map lies (``feature_pixels``).

    Free positions start at each neuron's receptive field, estimated from the data (data/rf_estimate.py), and move
    at a tenth of the readout lr without weight decay: at the readout's lr they random-walked away from any start
    and weight decay squeezed them towards the map's centre, while the core learned displaced features to reach the
    neurons (BUILD_NOTES.md, in-silico section).
    """
    c.model.readout.init_positions = "receptive_fields"
    c.model.readout.grid_mean_predictor = False
    c.optim.position_lr = 0.1 * c.optim.lr
    c.optim.decay_positions = False


def parse_variant(arg: str | None) -> dict[str, str]:
    """``"cpu"`` or ``"cpu,epochs=3"`` → {"cpu": "", "epochs": "3"}."""
    out = {}
    for part in (arg or "").split(","):
        if part:
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip()
    return out
