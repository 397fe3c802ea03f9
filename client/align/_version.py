"""The library version. Part of every report's provenance and of every cache key."""

__version__ = "0.1.0"

# Bumped whenever a metric's code changes the numbers it returns, so that cached
# results computed by older code are never served as current ones.
METRIC_CODE_VERSION = "3"  # 2: RSA mean over subjects, probe baseline/lift, LOO ceiling
# 3: probe L-BFGS with the closed-form gradient (fits differ at rounding level)
