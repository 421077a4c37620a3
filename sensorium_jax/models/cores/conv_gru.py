"""Convolutional GRU over time (neuralpredictors ``GRU_Module`` / ``ConvGRUCell``), run as ``jax.lax.scan``.

Per frame, with "same"-padded convolutions ``W·`` on the input and ``U·`` on the state (biases on all six)::

    z = σ(W_z x + U_z h)        r = σ(W_r x + U_r h)
    h̃ = tanh(W_o x + U_o (r ⊙ h))          h' = (1 − z) ⊙ h + z ⊙ h̃

from ``h = 0``; every state is output. The reference's six convolutions are stored fused: the three input
convolutions as one ``(k, k, C_in, 3C)`` kernel ([reset, update, out]) and the two gate convolutions on ``h`` as one
``(k, k, C, 2C)`` kernel — the same parameters, fewer, larger convolutions. The input convolutions do not depend
on the state, so they run once over all ``B·T`` frames before the scan; each scan step then does two
convolutions of the state. Initialisation as the reference: xavier-normal kernels (per gate), zero biases.

**Gradient.** The scan has a hand-written VJP (:func:`gru_scan`): a reverse scan that carries only the state's
gradient (state convolutions transposed as plain convolutions with the flipped kernel), and the gradients of the
two state kernels afterwards, each as *one* kernel gradient over all ``B·T`` frames. Autodiff of the scan
instead computes a small kernel gradient at every step; on XLA's CPU backend its reverse loop ran ~70× slower
than the forward one (measured: 24 steps of a 16-channel 5 × 5 recurrence, 4.0 s vs 0.06 s; 0.5 s with the
transposes written out), and one large contraction is also what a GPU runs best.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sensorium_jax.models.convolution import conv2d, kernel_gradient, pad_same
from sensorium_jax.models.layers import xavier_normal


def conv_same(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Zero-padded ("same", odd kernel) 2-D convolution, NHWC input, HWIO kernel."""
    return conv2d(x, kernel, padding="SAME")


def conv_same_transpose(g: jax.Array, kernel: jax.Array) -> jax.Array:
    """Gradient of :func:`conv_same` with respect to its input: the same convolution with the kernel flipped in
    space and its input / output channels swapped."""
    return conv_same(g, jnp.swapaxes(kernel[::-1, ::-1], 2, 3))


def conv_same_kernel_grad(x: jax.Array, g: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
    """Gradient of ``Σ g · conv_same(x, k)`` with respect to ``k``, over the whole batch at once."""
    return kernel_gradient(pad_same(x, kernel_shape), g, kernel_shape)


def _gates(gates: jax.Array, h: jax.Array, gate_kernel, gate_bias, out_kernel, out_bias):
    """One step's reset ``r``, update ``z``, gated state ``r ⊙ h`` and candidate ``h̃`` (input terms precomputed)."""
    c = h.shape[-1]
    hidden = conv_same(h, gate_kernel) + gate_bias.astype(h.dtype)
    reset = jax.nn.sigmoid(gates[..., :c] + hidden[..., :c])
    update = jax.nn.sigmoid(gates[..., c : 2 * c] + hidden[..., c:])
    gated = reset * h
    candidate = jnp.tanh(gates[..., 2 * c :] + conv_same(gated, out_kernel) + out_bias.astype(h.dtype))
    return reset, update, gated, candidate


@jax.custom_vjp
def gru_scan(gates: jax.Array, gate_kernel, gate_bias, out_kernel, out_bias) -> jax.Array:
    """Every state ``(T, B, H, W, C)`` from the input terms ``gates (T, B, H, W, 3C)`` ([reset, update, out]) and
    ``h = 0``. Time-major, as ``jax.lax.scan`` iterates."""
    return _gru_forward(gates, gate_kernel, gate_bias, out_kernel, out_bias)


def _gru_forward(gates, gate_kernel, gate_bias, out_kernel, out_bias):
    c = gates.shape[-1] // 3

    def step(h, frame_gates):
        _, update, _, candidate = _gates(frame_gates, h, gate_kernel, gate_bias, out_kernel, out_bias)
        new = h * (1.0 - update) + candidate * update
        return new, new

    _, states = jax.lax.scan(step, jnp.zeros((*gates.shape[1:-1], c), gates.dtype), gates)
    return states


def _gru_scan_fwd(gates, gate_kernel, gate_bias, out_kernel, out_bias):
    states = _gru_forward(gates, gate_kernel, gate_bias, out_kernel, out_bias)
    # the gates are recomputed in the backward pass: one state tensor kept instead of four
    return states, (gates, states, gate_kernel, gate_bias, out_kernel, out_bias)


def _gru_scan_bwd(residuals, d_states):
    gates, states, gate_kernel, gate_bias, out_kernel, out_bias = residuals
    previous = jnp.concatenate([jnp.zeros_like(states[:1]), states[:-1]])  # h_{t−1}

    def step(dh, inputs):
        frame_gates, h, d_out = inputs
        reset, update, gated, candidate = _gates(frame_gates, h, gate_kernel, gate_bias, out_kernel, out_bias)
        dh = dh + d_out
        d_candidate_pre = dh * update * (1.0 - candidate**2)
        d_update_pre = dh * (candidate - h) * update * (1.0 - update)
        d_gated = conv_same_transpose(d_candidate_pre, out_kernel)
        d_reset_pre = d_gated * h * reset * (1.0 - reset)
        d_hidden = jnp.concatenate([d_reset_pre, d_update_pre], axis=-1)
        d_h = dh * (1.0 - update) + d_gated * reset + conv_same_transpose(d_hidden, gate_kernel)
        return d_h, (jnp.concatenate([d_hidden, d_candidate_pre], axis=-1), gated)

    _, (d_gates, gated) = jax.lax.scan(step, jnp.zeros_like(states[0]), (gates, previous, d_states), reverse=True)
    c = states.shape[-1]
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # (T, B, …) → (T·B, …): one kernel gradient over every frame
    d_gate_kernel = conv_same_kernel_grad(flat(previous), flat(d_gates[..., : 2 * c]), gate_kernel.shape)
    d_out_kernel = conv_same_kernel_grad(flat(gated), flat(d_gates[..., 2 * c :]), out_kernel.shape)
    d_gate_bias = d_gates[..., : 2 * c].sum(axis=(0, 1, 2, 3)).astype(gate_bias.dtype)
    d_out_bias = d_gates[..., 2 * c :].sum(axis=(0, 1, 2, 3)).astype(out_bias.dtype)
    return (
        d_gates,
        d_gate_kernel.astype(gate_kernel.dtype),
        d_gate_bias,
        d_out_kernel.astype(out_kernel.dtype),
        d_out_bias,
    )


gru_scan.defvjp(_gru_scan_fwd, _gru_scan_bwd)


class ConvGRU(nnx.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int,
        input_kernel: int = 9,
        rec_kernel: int = 9,
        gamma_rec: float = 0.0,
        compute_dtype: str = "float32",
        *,
        rngs: nnx.Rngs,
    ):
        if input_kernel % 2 == 0 or rec_kernel % 2 == 0:
            raise ValueError(f"kernels must be odd for 'same' padding, got {input_kernel} and {rec_kernel}")
        c, k, kr = channels, input_kernel, rec_kernel
        self.channels = c
        self.gamma_rec = gamma_rec
        self.compute_dtype = jnp.dtype(compute_dtype)
        # each gate's torch Conv2d: fan_in = C_in·k², fan_out = C·k² (xavier_normal_), bias 0
        self.input_kernel = nnx.Param(
            xavier_normal(rngs.params(), (k, k, in_channels, 3 * c), in_channels * k * k, c * k * k)
        )
        self.input_bias = nnx.Param(jnp.zeros((3 * c,)))
        self.gate_kernel = nnx.Param(xavier_normal(rngs.params(), (kr, kr, c, 2 * c), c * kr * kr, c * kr * kr))
        self.gate_bias = nnx.Param(jnp.zeros((2 * c,)))
        self.out_kernel = nnx.Param(xavier_normal(rngs.params(), (kr, kr, c, c), c * kr * kr, c * kr * kr))
        self.out_bias = nnx.Param(jnp.zeros((c,)))

    def input_gates(self, x: jax.Array) -> jax.Array:
        """``x (N, H, W, C_in)`` → the input terms ``W x + b`` of [reset, update, out], ``(N, H, W, 3C)``."""
        x = x.astype(self.compute_dtype)
        return conv_same(x, self.input_kernel[...]) + self.input_bias[...].astype(x.dtype)

    def _state_params(self, dtype) -> tuple[jax.Array, ...]:
        return tuple(p[...].astype(dtype) for p in (self.gate_kernel, self.gate_bias, self.out_kernel, self.out_bias))

    def cell(self, x: jax.Array, h: jax.Array) -> jax.Array:
        """The reference's ``ConvGRUCell.forward``: one frame ``x (B, H, W, C_in)``, state ``h`` → new state.

        Written out step by step (autodiff through it is the reference the scan's VJP is tested against)."""
        gates = self.input_gates(x)
        h = h.astype(gates.dtype)
        _, update, _, candidate = _gates(gates, h, *self._state_params(gates.dtype))
        return h * (1.0 - update) + candidate * update

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x (B, T, H, W, C_in)`` → every state ``(B, T, H, W, C)``, starting from ``h = 0``."""
        b, t, h, w, _ = x.shape
        gates = self.input_gates(x.reshape(b * t, h, w, x.shape[-1])).reshape(b, t, h, w, -1)
        states = gru_scan(jnp.swapaxes(gates, 0, 1), *self._state_params(gates.dtype))
        return jnp.swapaxes(states, 0, 1)

    def regularizer(self) -> jax.Array:
        """The reference's ``gamma_rec · bias_l1`` (0 in the baseline). It mixes terms as neuralpredictors does:
        mean |bias| of the reset and out state convolutions and mean |weight| of the update state convolution,
        each / 3."""
        if not self.gamma_rec:
            return jnp.zeros(())
        c = self.channels
        reset_bias = jnp.mean(jnp.abs(self.gate_bias[...][:c]))
        update_weight = jnp.mean(jnp.abs(self.gate_kernel[...][..., c:]))
        out_bias = jnp.mean(jnp.abs(self.out_bias[...]))
        return self.gamma_rec * (reset_bias + update_weight + out_bias) / 3.0
