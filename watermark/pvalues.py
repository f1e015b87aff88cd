"""The p-value arithmetic both marks share: the Sidak correction and the one combination of several tests."""

from __future__ import annotations

import math

import numpy as np


def sidak(p, m: int):
    """P(min of m independent uniform p-values <= p): 1 - (1 - p)^m, as -expm1(m log1p(-p)), stable for tiny p.
    A float for a float, an array for an array."""
    if np.ndim(p) == 0:
        p = float(p)
        return float(-math.expm1(m * math.log1p(-min(p, 1.0 - 1e-16)))) if p < 1 else 1.0
    p = np.asarray(p, dtype=np.float64)
    return np.where(p < 1, -np.expm1(m * np.log1p(-np.minimum(p, 1 - 1e-16))), 1.0)


def combine(p_values: list[float]) -> float:
    """One p-value for 'at least one of these independent tests rejects': Sidak over their minimum."""
    return float(sidak(min(p_values), len(p_values)))
