"""Plain PyTorch transcriptions of the compared models, written the way the reference code writes them, so the
JAX/PyTorch ratio compares our JAX against a straightforward PyTorch implementation of the same architecture:

* :class:`TorchFactorized3dCore`: neuralpredictors' ``Factorized3dCore`` (Conv3d (1,k,k) → Conv3d (t,1,1) →
  BatchNorm3d → ELU per layer, behaviour broadcast as image channels, Laplace regularisers on the first layer).
* :class:`TorchViV1TCore`: ViV1T's core (``winning_models.md`` §3): ``unfold`` tubelets → LayerNorm → Linear →
  LayerNorm → dropout, learned positions, parallel blocks with ``F.scaled_dot_product_attention``, bf16 autocast
  when the config computes in bf16, block checkpointing when the config rematerialises.
* :class:`TorchConvGRU`: the GRU baseline's ``ConvGRUCell`` (six "same"-padded ``Conv2d``: reset / update / out on
  the input and on the state) run over time in a Python loop, as neuralpredictors' ``GRU_Module`` does;
  :class:`TorchGRUCore` puts neuralpredictors' ``RotationEquivariant2dCore`` on every frame in front of it.
* :class:`TorchGaussianReadout` (``FullGaussian2d``, full covariance, grid from the cortex MLP or free), the MLP
  shifter and ViV1T's behaviour encoder, used when neuralpredictors is not installed (with it, its own
  ``FullGaussian2d`` reads out).
* :func:`gain_modulator`: the optional per-neuron behavioural gain (``models/readouts/modulator.py``).
* :class:`TorchMultiMouseModel`: the shared core over every mouse's clips at once, then one readout per mouse.

Only imported when torch is (``sensorium_jax.benchmarking.torch_peers`` checks).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

_LAPLACE_2D = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
_LAPLACE_1D = torch.tensor([-1.0, 4.0, -1.0])


class TorchFactorized3dCore(nn.Module):
    """Input ``(B, C, T, H, W)`` with behaviour as constant channels → ``(B, C_out, T − burn_in, H', W')``."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: Sequence[int],
        spatial_kernels: Sequence[int],
        temporal_kernels: Sequence[int],
        spatial_strides: Sequence[int] | None = None,
        spatial_padding: Sequence[str] | None = None,
        bn_momentum: float = 0.7,
        gamma_input_spatial: float = 10.0,
        gamma_input_temporal: float = 0.01,
        **unused,
    ):
        super().__init__()
        strides = spatial_strides or [1] * len(hidden_channels)
        paddings = spatial_padding or ["valid"] * len(hidden_channels)
        layers = []
        c_in = in_channels
        for c, k, t, s, p in zip(hidden_channels, spatial_kernels, temporal_kernels, strides, paddings):
            pad = k // 2 if p.lower() == "same" else 0
            spatial = nn.Conv3d(c_in, c, (1, k, k), stride=(1, s, s), padding=(0, pad, pad))
            temporal = nn.Conv3d(c, c, (t, 1, 1))
            for conv in (spatial, temporal):
                nn.init.xavier_normal_(conv.weight)
                nn.init.zeros_(conv.bias)
            layers.append(nn.Sequential(spatial, temporal, nn.BatchNorm3d(c, momentum=bn_momentum), nn.ELU()))
            c_in = c
        self.layers = nn.Sequential(*layers)
        self.gamma_input_spatial = gamma_input_spatial
        self.gamma_input_temporal = gamma_input_temporal
        self.out_channels = int(hidden_channels[-1])
        self.burn_in = int(sum(t - 1 for t in temporal_kernels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)

    def regularizer(self) -> torch.Tensor:
        spatial = self.layers[0][0].weight  # (C_out, C_in, 1, k, k)
        filters = spatial.reshape(-1, 1, *spatial.shape[-2:])
        smooth = F.conv2d(filters, _LAPLACE_2D.to(filters)[None, None], padding=1)
        temporal = self.layers[0][1].weight  # (C_out, C_out, t, 1, 1)
        series = temporal.reshape(-1, 1, temporal.shape[2])
        smooth_t = F.conv1d(series, _LAPLACE_1D.to(series)[None, None], padding=1)
        return self.gamma_input_spatial * smooth.pow(2).sum() / filters.pow(2).sum() + (
            self.gamma_input_temporal * smooth_t.pow(2).sum() / series.pow(2).sum()
        )


class TorchParallelBlock(nn.Module):
    """ViV1T's parallel block: one LayerNorm, one fused bias-free projection into q, k, v and the FF input."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int,
        ff_dim: int,
        attention_dropout: float,
        ff_dropout: float,
        drop_path: float,
    ):
        super().__init__()
        self.num_heads, self.head_dim, self.ff_dim = num_heads, head_dim, ff_dim
        inner = num_heads * head_dim
        self.norm = nn.LayerNorm(dim)
        self.fused = nn.Linear(dim, 3 * inner + ff_dim, bias=False)
        self.attn_out = nn.Linear(inner, dim, bias=False)
        self.ff_out = nn.Linear(ff_dim, dim, bias=False)
        for linear in (self.fused, self.attn_out, self.ff_out):
            nn.init.trunc_normal_(linear.weight, std=0.02)
        self.attn_drop = nn.Dropout(attention_dropout)
        self.ff_drop = nn.Dropout(ff_dropout)
        self.drop_path = drop_path

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.drop_path
        return x * keep.to(x.dtype) / (1.0 - self.drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, _ = x.shape
        inner = self.num_heads * self.head_dim
        q, k, v, ff = self.fused(self.norm(x)).split([inner, inner, inner, self.ff_dim], dim=-1)
        heads = lambda a: a.reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)
        attn = F.scaled_dot_product_attention(heads(q), heads(k), heads(v))
        attn = self.attn_out(self.attn_drop(attn.transpose(1, 2).reshape(n, length, inner)))
        ff = self.ff_out(self.ff_drop(F.gelu(ff)))
        return x + self._drop_path(attn) + self._drop_path(ff)


class TorchViV1TCore(nn.Module):
    """Input ``(B, C, T, H, W)`` (behaviour and pupil centre as constant channels) → ``(B, D, T − pt + 1, H', W')``."""

    def __init__(
        self,
        in_channels: int,
        image_size: Sequence[int] = (36, 64),
        max_frames: int = 300,
        embed_dim: int = 112,
        spatial_patch: int = 7,
        spatial_stride: int = 2,
        temporal_patch: int = 25,
        spatial_depth: int = 3,
        temporal_depth: int = 5,
        num_heads: int = 11,
        head_dim: int = 48,
        ff_dim: int = 136,
        patch_dropout: float = 0.1338,
        attention_dropout: float = 0.358,
        ff_dropout: float = 0.0592,
        drop_path: float = 0.0505,
        compute_dtype: str = "float32",
        remat: bool = False,
        patch_norm: bool = True,
        token_norm: bool = True,
        **unused,
    ):
        super().__init__()
        h, w = image_size
        self.grid = ((h - spatial_patch) // spatial_stride + 1, (w - spatial_patch) // spatial_stride + 1)
        self.spatial_patch, self.spatial_stride, self.temporal_patch = spatial_patch, spatial_stride, temporal_patch
        patch_dim = in_channels * temporal_patch * spatial_patch**2
        self.patch_norm = nn.LayerNorm(patch_dim) if patch_norm else nn.Identity()
        self.proj = nn.Linear(patch_dim, embed_dim)
        self.norm = nn.LayerNorm(embed_dim) if token_norm else nn.Identity()
        self.dropout = nn.Dropout(patch_dropout)
        self.spatial_pos = nn.Parameter(torch.randn(self.grid[0] * self.grid[1], embed_dim))
        self.temporal_pos = nn.Parameter(torch.randn(max_frames - temporal_patch + 1, embed_dim))
        block = lambda: TorchParallelBlock(
            embed_dim, num_heads, head_dim, ff_dim, attention_dropout, ff_dropout, drop_path
        )
        self.spatial_blocks = nn.ModuleList([block() for _ in range(spatial_depth)])
        self.temporal_blocks = nn.ModuleList([block() for _ in range(temporal_depth)])
        self.bf16 = compute_dtype == "bfloat16"
        self.remat = remat
        self.out_channels = int(embed_dim)
        self.burn_in = int(temporal_patch - 1)

    def _run(self, block: nn.Module, h: torch.Tensor) -> torch.Tensor:
        if self.remat and self.training:
            return checkpoint(block, h, use_reentrant=False)
        return block(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        pt, ps, s = self.temporal_patch, self.spatial_patch, self.spatial_stride
        patches = x.unfold(2, pt, 1).unfold(3, ps, s).unfold(4, ps, s)  # (B, C, T', H', W', pt, ps, ps)
        t_out = patches.shape[2]
        patches = patches.permute(0, 2, 3, 4, 1, 5, 6, 7).reshape(b, t_out, self.grid[0] * self.grid[1], -1)
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()
        with autocast:
            tokens = self.dropout(self.norm(self.proj(self.patch_norm(patches))))
            tokens = tokens + self.spatial_pos[None, None] + self.temporal_pos[:t_out][None, :, None]
            p, d = tokens.shape[2], tokens.shape[3]
            h = tokens.reshape(b * t_out, p, d)
            for block in self.spatial_blocks:
                h = self._run(block, h)
            h = h.reshape(b, t_out, p, d).transpose(1, 2).reshape(b * p, t_out, d)
            for block in self.temporal_blocks:
                h = self._run(block, h)
        h = h.float().reshape(b, *self.grid, t_out, d)
        return h.permute(0, 4, 3, 1, 2)

    def regularizer(self) -> torch.Tensor:
        return torch.zeros(())


class TorchConvGRU(nn.Module):
    """neuralpredictors' ``ConvGRUCell`` / ``GRU_Module``: ``(B, C_in, T, H, W)`` → every state ``(B, C, T, H, W)``.

    Per frame, from ``h = 0``: ``z = σ(W_z x + U_z h)``, ``r = σ(W_r x + U_r h)``, ``h̃ = tanh(W_o x + U_o (r ⊙ h))``,
    ``h' = (1 − z) ⊙ h + z ⊙ h̃``; six separate convolutions with biases, xavier-normal kernels and zero biases, as
    the reference writes them (our JAX ``ConvGRU`` stores the same parameters fused into three kernels).
    """

    def __init__(
        self, in_channels: int, channels: int, input_kernel: int = 9, rec_kernel: int = 9, gamma_rec: float = 0.0
    ):
        super().__init__()
        self.channels = channels
        self.gamma_rec = gamma_rec

        def conv(c_in: int, kernel: int) -> nn.Conv2d:
            layer = nn.Conv2d(c_in, channels, kernel, padding=kernel // 2)
            nn.init.xavier_normal_(layer.weight)
            nn.init.zeros_(layer.bias)
            return layer

        self.reset_gate_input = conv(in_channels, input_kernel)
        self.reset_gate_hidden = conv(channels, rec_kernel)
        self.update_gate_input = conv(in_channels, input_kernel)
        self.update_gate_hidden = conv(channels, rec_kernel)
        self.out_gate_input = conv(in_channels, input_kernel)
        self.out_gate_hidden = conv(channels, rec_kernel)

    def cell(self, x: torch.Tensor, h: torch.Tensor | None) -> torch.Tensor:
        """One frame ``x (B, C_in, H, W)`` and the previous state (None: zeros) → the new state."""
        if h is None:
            h = x.new_zeros(x.shape[0], self.channels, *x.shape[2:])
        update = torch.sigmoid(self.update_gate_input(x) + self.update_gate_hidden(h))
        reset = torch.sigmoid(self.reset_gate_input(x) + self.reset_gate_hidden(h))
        candidate = torch.tanh(self.out_gate_input(x) + self.out_gate_hidden(h * reset))
        return h * (1.0 - update) + candidate * update

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = None
        states = []
        for frame in range(x.shape[2]):  # the reference's Python loop over time
            h = self.cell(x[:, :, frame], h)
            states.append(h)
        return torch.stack(states, dim=2)

    def regularizer(self) -> torch.Tensor:
        """neuralpredictors' ``bias_l1`` times ``gamma_rec`` (0 in the baseline)."""
        if not self.gamma_rec:
            return torch.zeros(())
        terms = (
            self.reset_gate_hidden.bias.abs().mean()
            + self.update_gate_hidden.weight.abs().mean()
            + self.out_gate_hidden.bias.abs().mean()
        )
        return self.gamma_rec * terms / 3.0


def hermite_filters(conv: nn.Module) -> torch.Tensor:
    """A neuralpredictors ``HermiteConv2D``'s filters of every rotation, ``(R·out, in, k, k)``: the ones its last
    forward pass used (as the reference's regularisers read them), or built from its coefficients before one."""
    if conv.weights_all_rotations is not None:
        return conv.weights_all_rotations
    fine = conv.rotate_hermite(conv.coeffs)  # (k·u, k·u, in, R·out)
    u = conv.upsampling
    k = fine.shape[0] // u
    return fine.reshape(k, u, k, u, *fine.shape[2:]).sum((1, 3)).permute(3, 2, 0, 1)


def rotation_equivariant_regularizer(core: nn.Module) -> torch.Tensor:
    """neuralpredictors ``RotationEquivariant2dCore.regularizer()``: ``gamma_input`` × LaplaceL2norm of the first
    layer's filters + ``gamma_hidden`` × group sparsity of the others.

    Written out because 0.3.0's own ``laplace()`` / ``group_sparsity()`` read ``features[l].conv``, while its layers
    name the convolution ``hermite_conv`` (an ``AttributeError``); the formulas are the release's. Its
    ``LaplaceL2norm`` ``view``s the filters, which fails on the permuted (non-contiguous) filter bank once the
    first layer has more than one input channel, hence ``contiguous()``."""
    filters = [hermite_filters(layer.hermite_conv) for layer in core.features]
    laplace = core._input_weights_regularizer(filters[0].contiguous(), avg=core.use_avg_reg)
    hidden = [weights.pow(2).sum((2, 3)).sqrt().mean() for weights in filters[1:]]
    sparsity = sum(hidden) / len(hidden) if hidden else 0.0
    return core.gamma_hidden * sparsity + core.gamma_input * laplace


class TorchGRUCore(nn.Module):
    """The GRU baseline's core: ``frame_core`` (neuralpredictors' ``RotationEquivariant2dCore``) on every frame,
    frames folded into the batch, then :class:`TorchConvGRU` over time.

    ``(B, C_in, T, H, W)`` (behaviour as constant image channels) → ``(B, gru_channels, T − burn_in, H', W')``, the
    3-D cores' layout, so :class:`TorchMultiMouseModel` reads it out like theirs.
    """

    def __init__(
        self,
        frame_core: nn.Module,
        frame_channels: int,
        gru_channels: int,
        gru_input_kernel: int,
        gru_rec_kernel: int,
        gamma_rec: float = 0.0,
        burn_in: int = 0,
    ):
        super().__init__()
        self.frame_core = frame_core
        self.gru = TorchConvGRU(frame_channels, gru_channels, gru_input_kernel, gru_rec_kernel, gamma_rec)
        self.out_channels = int(gru_channels)
        self.burn_in = int(burn_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        features = self.frame_core(x.transpose(1, 2).reshape(b * t, c, h, w))  # (B·T, C', H', W')
        features = features.reshape(b, t, *features.shape[1:]).transpose(1, 2)
        return self.gru(features)[:, :, self.burn_in :]

    def regularizer(self) -> torch.Tensor:
        return rotation_equivariant_regularizer(self.frame_core) + self.gru.regularizer()


def normalised_positions(coordinates: np.ndarray) -> np.ndarray:
    xy = np.asarray(coordinates, np.float64)[:, :2]
    xy = xy - xy.mean(axis=0, keepdims=True)
    return (xy / max(np.abs(xy).max(), 1e-12)).astype(np.float32)


class TorchGaussianReadout(nn.Module):
    """``FullGaussian2d`` (full covariance): one bilinear sample per neuron and sample, features · weights + bias."""

    def __init__(
        self,
        coordinates: np.ndarray,
        in_channels: int,
        mean_response: np.ndarray,
        init_sigma: float = 1.0,
        grid_hidden: int = 30,
        gamma_readout: float = 0.0,
        grid_mean_predictor: bool = True,
        init_mu_range: float = 0.3,
    ):
        super().__init__()
        n = len(coordinates)
        if grid_mean_predictor:
            self.register_buffer("positions", torch.from_numpy(normalised_positions(coordinates)))
            self.grid_mlp = nn.Sequential(nn.Linear(2, grid_hidden), nn.ELU(), nn.Linear(grid_hidden, 2), nn.Tanh())
        else:
            self.grid_mlp = None
            self.mu = nn.Parameter(torch.empty(n, 2).uniform_(-init_mu_range, init_mu_range))
        self.sigma = nn.Parameter(torch.empty(n, 2, 2).uniform_(-init_sigma, init_sigma))
        self.features = nn.Parameter(torch.full((in_channels, n), 1.0 / in_channels))
        self.bias = nn.Parameter(torch.as_tensor(np.asarray(mean_response, np.float32)).clone())
        self.gamma_readout = gamma_readout

    def forward(self, x: torch.Tensor, shift: torch.Tensor | None = None) -> torch.Tensor:
        """``x (S, C, H, W)``, ``shift (S, 2)`` → ``(S, N)``; samples positions in training."""
        mu = self.grid_mlp(self.positions) if self.grid_mlp is not None else self.mu.clamp(-1.0, 1.0)
        samples = x.shape[0]
        if self.training:
            z = torch.randn(samples, *mu.shape, device=x.device)
            grid = (mu + torch.einsum("ncd,snd->snc", self.sigma, z)).clamp(-1.0, 1.0)
        else:
            grid = mu.expand(samples, *mu.shape)
        if shift is not None:
            grid = grid + shift[:, None, :]
        sampled = F.grid_sample(x, grid[:, :, None, :], align_corners=True)[..., 0]  # (S, C, N)
        return torch.einsum("scn,cn->sn", sampled, self.features) + self.bias

    def feature_weights(self) -> torch.Tensor:
        return self.features

    def regularizer(self) -> torch.Tensor:
        return self.gamma_readout * self.features.abs().sum()


def mlp_shifter(hidden: Sequence[int] = (5, 5)) -> nn.Module:
    sizes = [2, *hidden, 2]
    layers: list[nn.Module] = []
    for i, o in itertools.pairwise(sizes):
        layers += [nn.Linear(i, o), nn.Tanh()]
    return nn.Sequential(*layers)


def behavior_encoder(channels: int, in_features: int = 4, dropout: float = 0.0) -> nn.Module:
    return nn.Sequential(
        nn.Linear(in_features, channels),
        nn.LayerNorm(channels),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Linear(channels, channels),
        nn.Tanh(),
    )


def gain_modulator(num_neurons: int, in_features: int = 2, hidden: int = 8) -> nn.Module:
    """Behaviour → log-gain per neuron (``models/readouts/modulator.py``); the last layer starts at zero (gain 1)."""
    last = nn.Linear(hidden, num_neurons)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ELU(), last)


OUTPUTS = {"elu1": lambda x: F.elu(x) + 1.0, "exp": torch.exp, "softplus": F.softplus}


class TorchMultiMouseModel(nn.Module):
    """Core over all ``M·b`` clips, then per mouse: shifter → readout (+ behaviour encoding) → output nonlinearity.

    ``forward(videos (M, b, T, H, W), behavior (M, b, T, K_b), pupil (M, b, T, 2))`` → list over mice of
    ``(b, T', N_m)``. A 2-D core (static images, ``T = 1``) gets ``(M·b, C, H, W)`` and is read out per image.
    """

    def __init__(
        self,
        core: nn.Module,
        readouts: Sequence[nn.Module],
        shifters: Sequence[nn.Module] | None,
        encoders: Sequence[nn.Module] | None,
        behavior_channels: bool,
        pupil_center_channels: bool,
        output: str,
        core_is_2d: bool = False,
        modulators: Sequence[nn.Module] | None = None,
    ):
        super().__init__()
        self.modulators = nn.ModuleList(modulators) if modulators else None
        self.core = core
        self.readouts = nn.ModuleList(readouts)
        self.shifters = nn.ModuleList(shifters) if shifters else None
        self.encoders = nn.ModuleList(encoders) if encoders else None
        self.behavior_channels = behavior_channels
        self.pupil_center_channels = pupil_center_channels
        self.output = OUTPUTS[output]
        self.core_is_2d = core_is_2d

    def forward(self, videos: torch.Tensor, behavior: torch.Tensor, pupil: torch.Tensor) -> list[torch.Tensor]:
        m, b, t, h, w = videos.shape
        x = videos.reshape(m * b, 1, t, h, w)
        constants = [behavior] * self.behavior_channels + [pupil] * self.pupil_center_channels
        if constants:  # the reference broadcasts behaviour over the image as extra input channels
            c = torch.cat(constants, -1).reshape(m * b, t, -1).permute(0, 2, 1)
            x = torch.cat([x, c[:, :, :, None, None].expand(-1, -1, -1, h, w)], dim=1)
        if self.core_is_2d:
            features = self.core(x[:, :, 0])[:, :, None]  # (M·b, C, 1, H', W')
        else:
            features = self.core(x)  # (M·b, C, T', H', W')
        t_out = features.shape[2]
        outputs = []
        for i, readout in enumerate(self.readouts):
            f = (
                features[i * b : (i + 1) * b]
                .transpose(1, 2)
                .reshape(b * t_out, *features.shape[1:2], *features.shape[3:])
            )
            shift = None
            if self.shifters is not None:
                shift = self.shifters[i](pupil[i, :, t - t_out :].reshape(b * t_out, 2))
            y = readout(f, shift=shift)
            if self.encoders is not None:
                states = torch.cat([behavior[i], pupil[i]], -1)[:, t - t_out :].reshape(b * t_out, -1)
                weights = readout_feature_weights(readout)
                y = y + self.encoders[i](states) @ weights
            rates = self.output(y)
            if self.modulators is not None:  # multiplicative behavioural gain per neuron
                rates = rates * torch.exp(self.modulators[i](behavior[i, :, t - t_out :].reshape(b * t_out, -1)))
            outputs.append(rates.reshape(b, t_out, -1))
        return outputs

    def regularizer(self) -> torch.Tensor:
        """The core's penalty once per mouse batch (as the reference accumulates it) plus every readout's."""
        total = len(self.readouts) * self.core.regularizer()
        for readout in self.readouts:
            total = total + readout.regularizer()
        return total


def readout_feature_weights(readout: nn.Module) -> torch.Tensor:
    """``(C, N)`` feature weights of our readout or of neuralpredictors' ``FullGaussian2d`` (``(1, C, 1, N)``)."""
    if isinstance(readout, TorchGaussianReadout):
        return readout.features
    features = readout.features
    return features.reshape(features.shape[1], -1)


def poisson_correlation_loss(
    predictions: Sequence[torch.Tensor],
    responses: torch.Tensor,
    loss_scale: Sequence[float],
    correlation_weight: float = 0.0,
    last_frames: int = 0,
) -> torch.Tensor:
    """The train step's loss: per mouse Σ(ŷ − y log(ŷ + 1e-8)) (+ w · Σ(1 − corr)), times its scale."""
    total = torch.zeros((), device=responses.device)
    for i, prediction in enumerate(predictions):
        n, t_out = prediction.shape[-1], prediction.shape[1]
        target = responses[i, :, -t_out:, :n]
        if last_frames:
            prediction, target = prediction[:, -last_frames:], target[:, -last_frames:]
        loss = (prediction - target * torch.log(prediction + 1e-8)).sum()
        if correlation_weight:
            p = prediction.reshape(-1, n)
            y = target.reshape(-1, n)
            p = (p - p.mean(0)) / (p.std(0, unbiased=False) + 1e-8)
            y = (y - y.mean(0)) / (y.std(0, unbiased=False) + 1e-8)
            loss = loss + correlation_weight * (1.0 - (p * y).mean(0)).sum()
        total = total + loss_scale[i] * loss
    return total
