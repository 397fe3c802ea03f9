"""The library version. Part of every report's provenance and of every cache key."""

__version__ = "0.1.0"

# Bumped whenever a metric's code changes the numbers it returns, so that cached
# results computed by older code are never served as current ones.
METRIC_CODE_VERSION = "5"  # 2: RSA mean over subjects, probe baseline/lift, LOO ceiling
# 3: probe L-BFGS with the closed-form gradient (fits differ at rounding level)
# 4: probe L-BFGS stops a stalled fit (core.STALL_FACTOR) and optimises in the basis where
#    the training rows are triangular (fits differ in the over-fitting regime, small lambda)
# 5: probe L-BFGS direction from inner products (core.LbfgsHistory) and the similarities and
#    gradient scatter through a sparse pair pattern (rounding level; small lambda more)
