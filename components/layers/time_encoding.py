"""Periodic time features (PinnerFormer, arXiv 2205.04507, section 3.2 "Features")."""

from __future__ import annotations

import math

import torch
from torch import nn


class TimeEncoding(nn.Module):
    """Encode a non-negative time value with sines and cosines at P fixed periods.

    PinnerFormer, arXiv 2205.04507: each time feature (absolute timestamp, time since the latest
    action, gap to the previous action) becomes 2P+1 values,

        x' = log(1 + x)                      (log_time=True; time deltas spanning seconds to months)
        x' = x mod period_max                (log_time=False; the absolute timestamp, where log(x)
                                              would be constant and the phase is what matters)
        enc(x) = [x' / scale,  sin(2 pi x' / T_1), cos(2 pi x' / T_1), ..., sin(2 pi x' / T_P), cos(2 pi x' / T_P)]

    with periods T_1..T_P spaced geometrically between ``min_period`` and ``max_period`` (in units of
    x'). The periods are fixed (buffers), not learned.

    Args:
        num_periods: P.
        min_period: shortest period, in units of x'.
        max_period: longest period, in units of x'.
        log_time: apply log(1 + x) before the periods (else x mod max_period).

    Returns: (..., 2P+1) for an input of shape (...).
    """

    def __init__(self, num_periods: int, min_period: float, max_period: float, log_time: bool = True):
        super().__init__()
        if num_periods < 1 or not 0 < min_period <= max_period:
            raise ValueError(f"TimeEncoding: need num_periods >= 1 and 0 < min_period <= max_period, got "
                             f"{num_periods}, {min_period}, {max_period}")
        periods = torch.logspace(math.log10(min_period), math.log10(max_period), num_periods, dtype=torch.float64)
        self.register_buffer("angular", (2 * math.pi / periods).float(), persistent=False)  # (P,)
        self.log_time = log_time
        self.max_period = float(max_period)
        self.out_dim = 2 * num_periods + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64).clamp(min=0)
        if self.log_time:
            xp = torch.log1p(x)
        else:
            xp = torch.remainder(x, self.max_period)  # float64: exact enough for unix seconds
        phase = (xp.unsqueeze(-1) * self.angular.to(torch.float64)).float()  # (..., P)
        scalar = (xp / self.max_period).float().unsqueeze(-1)  # (..., 1)
        return torch.cat([scalar, torch.sin(phase), torch.cos(phase)], dim=-1)  # (..., 2P+1)
