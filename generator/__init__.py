"""DDPM generator: schedules, U-Net, samplers, training, checkpoints, data and safe image I/O.

This package imports no sibling package (docs/architecture.md; import-linter enforces it in `make test`).
"""

from ddpm_guard.generator.errors import GuardError

__all__ = ["GuardError"]
