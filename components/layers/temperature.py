"""A learned softmax temperature with a floor (PinnerFormer, arXiv 2205.04507, section 3.4)."""

from __future__ import annotations

import torch


def clamped_temperature(log_temperature: torch.Tensor, min_temperature: float) -> torch.Tensor:
    """tau = max(exp(log_temperature), min_temperature); no gradient flows while clamped.

    Args:
        log_temperature: scalar parameter, log tau.
        min_temperature: the floor (0.01 in the paper).

    Returns: scalar tau.
    """
    return torch.clamp(log_temperature.exp(), min=min_temperature)
