"""A metric over seeds: mean and standard deviation per variant, and the difference of two
variants' means with Welch's interval (unequal variances, Welch-Satterthwaite degrees of
freedom), as ``scipy.stats.ttest_ind(a, b, equal_var=False).confidence_interval()`` gives it.

scipy is a test extra, not a dependency: without it the t quantile comes from the t
distribution's CDF (a regularized incomplete beta function) inverted by bisection.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence


@dataclasses.dataclass(frozen=True)
class Summary:
  """n values: their mean and sample standard deviation (n - 1 in the denominator; nan for
  n < 2, where one value says nothing of the spread)."""

  n: int
  mean: float
  sd: float


@dataclasses.dataclass(frozen=True)
class Difference:
  """mean(a) - mean(b), and its interval; low, high and df are None when there is none, and
  `no_interval` says why."""

  difference: float
  low: float | None
  high: float | None
  df: float | None
  confidence: float
  no_interval: str | None = None


def summarize(values: Sequence[float]) -> Summary:
  values = [float(v) for v in values]
  if not values:
    raise ValueError("no values to summarize")
  n = len(values)
  mean = math.fsum(values) / n
  sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
  return Summary(n, mean, sd)


def welch_difference(a: Summary, b: Summary, confidence: float = 0.95) -> Difference:
  """a's mean minus b's, with its `confidence` Welch interval."""
  difference = a.mean - b.mean
  if a.n < 2 or b.n < 2:
    return Difference(difference, None, None, None, confidence,
                      f"no interval: n = {a.n} against {b.n}, and each side needs 2 or more "
                      "runs to measure its spread")
  var_a, var_b = a.sd ** 2 / a.n, b.sd ** 2 / b.n
  se2 = var_a + var_b
  if se2 == 0.0:
    return Difference(difference, None, None, None, confidence,
                      "no interval: every run of both variants has the same value")
  df = se2 ** 2 / (var_a ** 2 / (a.n - 1) + var_b ** 2 / (b.n - 1))
  half = t_quantile(0.5 + confidence / 2, df) * math.sqrt(se2)
  return Difference(difference, difference - half, difference + half, df, confidence)


def seeds_for_half_width(sd_a: float, sd_b: float, half_width: float,
                         confidence: float = 0.95, most: int = 10_000) -> int | None:
  """The fewest runs per variant (the same n for both) whose Welch interval is expected to be
  no wider than +-half_width if the two variants' standard deviations are sd_a and sd_b; None
  if not within `most`. It plans seeds; the interval the runs then give uses their own sds."""
  spread = sd_a ** 2 + sd_b ** 2
  if spread == 0.0:
    return 2
  for n in range(2, most + 1):
    df = spread ** 2 * (n - 1) / (sd_a ** 4 + sd_b ** 4)
    if t_quantile(0.5 + confidence / 2, df) * math.sqrt(spread / n) <= half_width:
      return n
  return None


def t_quantile(p: float, df: float) -> float:
  """The p-quantile of Student's t with `df` (real, > 0) degrees of freedom."""
  try:
    from scipy import stats  # pylint: disable=import-outside-toplevel
  except ImportError:
    return _t_quantile_by_bisection(p, df)
  return float(stats.t.ppf(p, df))


def _t_quantile_by_bisection(p: float, df: float) -> float:
  if not 0.0 < p < 1.0 or df <= 0:
    raise ValueError(f"t quantile needs 0 < p < 1 and df > 0, not p={p}, df={df}")
  if p < 0.5:
    return -_t_quantile_by_bisection(1.0 - p, df)
  low, high = 0.0, 1.0
  while t_cdf(high, df) < p:
    high *= 2.0
  for _ in range(200):  # to the float's resolution
    middle = 0.5 * (low + high)
    if t_cdf(middle, df) < p:
      low = middle
    else:
      high = middle
    if high - low <= 1e-15 * high:
      break
  return 0.5 * (low + high)


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) = 1 - I_x(df/2, 1/2) / 2 for t >= 0, with x = df / (df + t^2)."""
  tail = 0.5 * _regularized_beta(df / (df + t * t), df / 2.0, 0.5)
  return 1.0 - tail if t >= 0 else tail


def _regularized_beta(x: float, a: float, b: float) -> float:
  """I_x(a, b) by its continued fraction (modified Lentz), taken on the side where it
  converges fast (Numerical Recipes, section 6.4)."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
               + a * math.log(x) + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _beta_fraction(x, a, b) / a
  return 1.0 - math.exp(log_front) * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
  tiny = 1e-300
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  fraction = d
  for m in range(1, 1000):
    for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                      -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + numerator * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + numerator / c
      c = c if abs(c) > tiny else tiny
      fraction *= c * d
    if abs(c * d - 1.0) < 1e-15:
      break
  return fraction
