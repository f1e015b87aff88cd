"""DDPM generator: schedules, U-Net, samplers, training, checkpoints, data and safe image I/O.

This package imports no sibling package (see ARCHITECTURE.md in the project docs).
"""

from ddpm_guard.generator.errors import GuardError

__all__ = ["GuardError"]
