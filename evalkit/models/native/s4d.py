"""S4D mixer: a diagonal linear time-invariant SSM (Gu et al. 2022, "On the Parameterization and
Initialization of Diagonal State Space Models"), in the same block as Mamba-1.

in_proj → (x, z); x → causal depthwise conv + SiLU → per-channel LTI SSM + D x; y * SiLU(z) →
out_proj. The block is mamba.py's with one difference: Ā, B̄, C are fixed per channel instead of
computed from the input, so comparing the two isolates what *selectivity* buys.

Per channel c with N/2 complex modes n (the conjugate half is implicit, so the state holds N
real numbers, as many as Mamba's with the same ``d_state``); zero-order hold with step Δ_c and
B = 1 folded into C:

    h_t = Ā h_{t-1} + x_t            Ā = exp(Δ A)                                (N/2,) complex
    y_t = 2 Re(C̃ · h_t) + D x_t      C̃ = C (exp(Δ A) − 1) / A

so y = K ∗ x with the causal kernel K_l = 2 Re(Σ_n C̃_n Ā_n^l). The parallel path builds K from
a Vandermonde matrix and convolves by FFT (O(L log L)); ``step`` runs the recurrence.
Init S4D-Lin: A_n = −1/2 + iπn, C ~ CN(0, 1), Δ log-uniform in [1e-3, 1e-1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from evalkit.models.native.config import NativeConfig
from evalkit.models.native.mamba import causal_conv_step, conv_silu
from evalkit.models.native.mixer import (
    Mixer,
    init_normal_,
    init_uniform_,
    out_proj_std,
    register_mixer,
)

# Decode state: (conv_state (B, d_inner, d_conv-1), ssm_state (B, d_inner, N/2, 2): the complex
# modes as (real, imag) pairs, in float32 / float64).
SSMState = tuple[torch.Tensor, torch.Tensor]


@register_mixer("s4d")
class S4D(Mixer):
    """Gated S4D block (LTI SSM, no input-dependent parameters)."""

    is_attention = False

    def __init__(self, cfg: NativeConfig, layer_idx: int) -> None:
        super().__init__(cfg, layer_idx)
        E, self.modes = cfg.d_inner, cfg.d_state // 2
        self.d_inner = E
        self.in_proj = nn.Linear(cfg.d_model, 2 * E, bias=False)
        self.conv1d = nn.Conv1d(E, E, cfg.d_conv, groups=E, padding=cfg.d_conv - 1)
        self.log_dt = nn.Parameter(torch.empty(E))
        # A is stored flat (E * N/2,): as 1-d parameters the trainer exempts them from weight
        # decay, as S4 trains its A and Δ (decay would pull the frequencies iπn towards 0).
        self.log_A_real = nn.Parameter(torch.empty(E * self.modes))
        self.A_imag = nn.Parameter(torch.empty(E * self.modes))
        self.C = nn.Parameter(torch.empty(E, self.modes, 2))  # complex, as (real, imag)
        self.D = nn.Parameter(torch.empty(E))
        self.out_proj = nn.Linear(E, cfg.d_model, bias=False)

    @classmethod
    def check_config(cls, cfg: NativeConfig) -> None:
        if cfg.d_state % 2:
            raise ValueError(f"'d_state' ({cfg.d_state}) must be even for s4d layers "
                             "(d_state / 2 complex modes)")

    def reset_parameters(self, gen: torch.Generator) -> None:
        init_normal_(self.in_proj.weight, 0.02, gen)
        bound = 1.0 / math.sqrt(self.cfg.d_conv)  # PyTorch's default conv init, fan_in = d_conv
        init_uniform_(self.conv1d.weight, -bound, bound, gen)
        init_uniform_(self.conv1d.bias, -bound, bound, gen)
        init_uniform_(self.log_dt, math.log(1e-3), math.log(1e-1), gen)
        init_normal_(self.C, math.sqrt(0.5), gen)  # unit-variance complex normal
        with torch.no_grad():  # S4D-Lin
            self.log_A_real.fill_(math.log(0.5))
            self.A_imag.copy_((math.pi * torch.arange(self.modes, dtype=torch.float64)).repeat(self.d_inner))
            self.D.fill_(1.0)
        init_normal_(self.out_proj.weight, out_proj_std(self.cfg), gen)

    # ---- the discretised SSM --------------------------------------------------------------
    def _discrete(self, ct: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Δ·A and C̃ in compute dtype ``ct`` (float32 / float64): each (d_inner, N/2) complex."""
        shape = (self.d_inner, self.modes)
        A = torch.complex(-torch.exp(self.log_A_real.to(ct)), self.A_imag.to(ct)).view(shape)
        dtA = torch.exp(self.log_dt.to(ct))[:, None] * A  # (E, N/2)
        C = torch.view_as_complex(self.C.to(ct).contiguous())  # (E, N/2)
        return dtA, C * torch.expm1(dtA) / A

    def _ssm(self, x: torch.Tensor, return_state: bool, h0: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, E, L) real in compute dtype → y: (B, E, L) (without D x), final h (B, E, N/2, 2).

        ``h0`` (B, E, N/2, 2): the state before x (a continued prefill). It adds Ā^(t+1) h0 to
        every h_t, i.e. 2·Re(Σ_n C̃_n Ā_n^(t+1) h0_n) to y_t, and Ā^L h0 to the final state."""
        L = x.shape[-1]
        dtA, C = self._discrete(x.dtype)
        powers = torch.exp(dtA[:, :, None] * torch.arange(L, device=x.device, dtype=x.dtype))  # (E, N/2, L)
        K = 2 * torch.einsum("en,enl->el", C, powers).real  # (E, L) the convolution kernel
        n = 2 * L  # zero-padded: a linear, not circular, convolution
        y = torch.fft.irfft(torch.fft.rfft(x, n=n) * torch.fft.rfft(K, n=n), n=n)[..., :L]
        if h0 is not None:
            h0c = torch.view_as_complex(h0.to(x.dtype).contiguous()) * torch.exp(dtA)  # Ā h0: (B, E, N/2)
            y = y + 2 * torch.einsum("ben,en,enl->bel", h0c, C, powers).real
        if not return_state:
            return y, None
        # h_L = Σ_l Ā^(L-1-l) x_l: the same powers against the reversed input
        h = torch.einsum("bel,enl->ben", x.flip(-1).to(powers.dtype), powers)  # (B, E, N/2)
        if h0 is not None:
            h = h + h0c * powers[:, :, -1]  # + Ā^L h0
        return y, torch.view_as_real(h)

    def _forward(self, u: torch.Tensor, return_state: bool, state: SSMState | None = None):
        ct = torch.float64 if u.dtype == torch.float64 else torch.float32  # FFTs need fp32+
        x, z = self.in_proj(u).transpose(1, 2).chunk(2, dim=1)  # (B, E, L) each
        xc, conv_state = conv_silu(x, self.conv1d, None if state is None else state[0], return_state)
        xc = xc.to(ct)  # (B, E, L)
        y, h = self._ssm(xc, return_state, None if state is None else state[1])
        y = (y + self.D.to(ct)[:, None] * xc) * F.silu(z.to(ct))
        y = self.out_proj(y.transpose(1, 2).to(u.dtype))  # (B, L, D)
        if not return_state:
            return y
        return y, (conv_state, h)

    def _continue(self, x: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        return self._forward(x, True, state)

    def init_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> SSMState:
        state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        return (torch.zeros(batch, self.d_inner, self.cfg.d_conv - 1, device=device, dtype=dtype),
                torch.zeros(batch, self.d_inner, self.modes, 2, device=device, dtype=state_dtype))

    def step(self, x_t: torch.Tensor, state: SSMState) -> tuple[torch.Tensor, SSMState]:
        conv_state, h = state
        x, z = self.in_proj(x_t).chunk(2, dim=-1)  # (B, E) each
        xc, conv_state = causal_conv_step(conv_state, x, self.conv1d)
        xc = F.silu(xc).to(h.dtype)
        dtA, C = self._discrete(h.dtype)
        hc = torch.exp(dtA) * torch.view_as_complex(h.contiguous()) + xc[:, :, None]  # (B, E, N/2)
        y = 2 * (hc * C).sum(-1).real + self.D.to(h.dtype) * xc  # (B, E)
        y = (y * F.silu(z.to(h.dtype))).to(x_t.dtype)
        return self.out_proj(y), (conv_state, torch.view_as_real(hc))

    def fixed_state_bytes(self, dtype_bytes: int = 2) -> int:
        return self.d_inner * (self.cfg.d_conv - 1 + 2 * self.modes) * dtype_bytes
