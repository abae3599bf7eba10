"""Options of `make compare`; kept apart from the report code so bad values fail at once."""

from dataclasses import dataclass

from harness.core.config import ConfigError


@dataclass
class CompareOptions:
    step: int | None = None
    """boundary grid step; None takes the last step every shown curve has an image for"""
    bands_per_decade: int = 1
    """learning-rate bands per factor of 10 (1: [0.01, 0.1), [0.1, 1), ...)"""
    min_trials: int = 5
    """fewest values a band needs before its spread is given as numbers"""
    resamples: int = 2000
    """bootstrap resamples for the confidence interval of the median"""
    bootstrap_seed: int = 0
    """seed of the bootstrap (recorded in the report)"""
    max_tiles: int = 16
    """most boundaries in one small-multiples grid"""

    def check(self) -> "CompareOptions":
        for key, low in (("bands_per_decade", 1), ("min_trials", 2), ("resamples", 100), ("max_tiles", 1)):
            if getattr(self, key) < low:
                raise ConfigError(f"{key.replace('_', '-')}: must be >= {low}, got {getattr(self, key)}")
        if self.step is not None and self.step < 0:
            raise ConfigError(f"step: must be >= 0, got {self.step}")
        return self
