"""The SENSORIUM 2022 state-of-the-art baseline (sensorium ``1a/1b_model_training_*.ipynb``): static images.

``--config=static_baseline``: the Sensorium+ recipe — Stacked2dCore (4 layers × 64, input kernel 9 unpadded,
depth-separable hidden kernels 7, batch norm momentum 0.9, ELU, Laplace regulariser 6.3831) + FullGaussian2d
readout (init sigma 0.1, mu range 0.3, feature L1 0.0076, grid from the cortex MLP) + MLP shifter; behaviour
(3 channels) appended to the image; Adam lr 0.009, batch 128 images per mouse, early stopping on the validation
tier with the plateau schedule (patience 5, × 0.3, 4 decays, min lr 1e-4). Trains on the built-in synthetic static
dataset unless ``--config.data.paths`` names real session folders.

Variants (comma-separated, e.g. ``static_baseline:cpu,sensorium``):

* ``sensorium``: the Sensorium track — images only, no behaviour channels, no shifter;
* ``cpu``: a model that learns the synthetic dataset in minutes on a 2-core CPU (the reference recipe takes
  ~30 s a step there; BUILD_NOTES.md);
* ``epochs=N``: at most N epochs.
"""

import ml_collections

from experiments.configs.common import base_config, parse_variant


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = parse_variant(arg)
    c = base_config()
    c.task = "static"
    c.data.batch_size = 128  # images per mouse per optimiser step
    c.data.image_scale = 0.25  # 144 × 256 → 36 × 64, as the reference's ScaleInputs(0.25)
    c.data.synthetic = ml_collections.ConfigDict()  # StaticSyntheticConfig overrides (defaults when empty)
    c.data.clip_frames = 1  # a static sample is one frame (the video field, unused here)

    c.model = ml_collections.ConfigDict()
    c.model.core = ml_collections.ConfigDict(
        dict(
            name="stacked2d",
            hidden_channels=64,
            layers=4,
            input_kernel=9,
            hidden_kernel=7,
            input_stride=1,
            bn_momentum=0.9,
            gamma_input=6.3831,
            bias=False,
            final_nonlinearity=True,
            stack=-1,
            compute_dtype="float32",
        )
    )
    c.model.readout = ml_collections.ConfigDict(
        dict(
            init_sigma=0.1,
            grid_hidden=30,
            gamma_readout=0.0076,
            grid_mean_predictor=True,
            init_mu_range=0.3,
        )
    )
    c.model.shifter = ml_collections.ConfigDict(dict(hidden=(5, 5)))
    c.model.use_shifter = True  # Sensorium+: the pupil centre shifts the readout grid
    c.model.behavior_channels = True  # Sensorium+: [pupil, its derivative, running] as constant image channels
    c.model.output = "elu1"

    c.optim.lr = 0.009
    c.optim.weight_decay = 0.0  # torch Adam: no weight decay
    c.schedule.patience = 5
    c.schedule.factor = 0.3
    c.schedule.lr_decay_steps = 4
    c.train.max_epochs = 200
    c.eval.batch_size = 128

    if "sensorium" in variant:
        c.model.use_shifter = False
        c.model.behavior_channels = False
    if "cpu" in variant:
        # Minutes on 2 CPU cores: half the channels and a stride-2 input convolution (14 × 28 feature maps instead
        # of 28 × 56), 32 images per mouse and step; free per-neuron readout positions, which learned faster than
        # the cortex-MLP grid in short runs of the video demo.
        c.model.core.hidden_channels = 32
        c.model.core.input_stride = 2
        c.model.readout.grid_mean_predictor = False
        c.data.batch_size = 32
        c.train.max_epochs = 20
        c.schedule.patience = 4
        c.schedule.lr_decay_steps = 2
    if "epochs" in variant:
        c.train.max_epochs = int(variant["epochs"])
    return c
