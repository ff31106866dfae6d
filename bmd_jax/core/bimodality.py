"""Is a layer's weight distribution two-humped? Measures, not assertions (issue 27).

Kurtosis alone does not tell (a uniform distribution has kurtosis 1.8, BD-BNN's default
target), so each layer gets three shape measures, on the distribution sign() sees:

- ``near_zero_share``: the share of weights within ``threshold`` standard deviations of 0;
- ``bimodality_coefficient``: Sarle's coefficient from skewness and kurtosis;
- ``zero_density_ratio``: the histogram's height at 0 relative to its lower mode.

Under IR-Net scaling (``scale_mode='irnet'``) sign() sees each output channel standardized
(``losses.standardized``), not the raw latent tensor; ``view`` picks either. Reference values
(large n; see the functions): Gaussian, uniform, a two-Gaussian mixture at +-1 with std 0.54
(kurtosis 1.8) and a symmetric two-point distribution give near-zero shares 0.080, 0.058,
0.031 and 0; coefficients 1/3, 5/9, 5/9 and 1; zero-density ratios about 1.02, 1, 0.37
and 0.
A coefficient above 5/9 (the uniform's) is the usual sign of bimodality.

Pure functions of arrays (numpy in float64; jax arrays are read back to the host), for
``python -m bmd_jax.tools.analyze`` and for a training loop's logs (``layer_report``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from bmd_jax.core import losses

VIEWS = ("standardized", "latent")
# Jitted once per shape: op-by-op, the first report of a ResNet-20 compiled for 7 s on a CPU.
_standardized = jax.jit(losses.standardized)
_kurtosis = jax.jit(losses.kurtosis)
NEAR_ZERO = 0.1  # "near zero": within 0.1 standard deviation
ZERO_DENSITY_BINS = 31  # odd: one bin is centred on 0
ZERO_DENSITY_RANGE = 3.0  # the histogram spans +-3 standard deviations


def view_of(w, view: str = "standardized") -> np.ndarray:
  """``w`` as float64: standardized per output channel (last axis) as IR-Net's sign() sees it
  (``losses.standardized``), or the raw latents (``"latent"``)."""
  if view not in VIEWS:
    raise ValueError(f"unknown view {view!r}; known views: {VIEWS}")
  if view == "standardized":
    w = _standardized(w)
  return np.asarray(w, np.float64)


def near_zero_share(w, threshold: float = NEAR_ZERO) -> float:
  """The share of entries with ``|w| < threshold * std(w)``, std over the whole tensor
  (divisor N). Measured from 0, sign()'s threshold, not from the mean. Large n: Gaussian
  ``erf(0.1 / sqrt 2) = 0.080``, uniform ``0.1 / sqrt 3 = 0.058``, two-point 0."""
  w = np.asarray(w, np.float64).ravel()
  return float(np.mean(np.abs(w) < threshold * np.std(w)))


def bimodality_coefficient(w) -> float:
  """Sarle's bimodality coefficient of all entries of ``w``,

      BC = (G1^2 + 1) / (G2 + 3 (n - 1)^2 / ((n - 2)(n - 3)))

  with the bias-corrected sample skewness ``G1 = g1 sqrt(n (n - 1)) / (n - 2)`` and excess
  kurtosis ``G2 = ((n + 1) g2 + 6) (n - 1) / ((n - 2)(n - 3))``, where ``g1 = m3 / m2^1.5``,
  ``g2 = m4 / m2^2 - 3`` and ``m_k`` are the central moments with divisor n (scipy's
  ``skew``/``kurtosis`` with ``bias=False``). For large n, ``BC -> (skew^2 + 1) / kurtosis``:
  Gaussian 1/3, uniform 5/9, two-point 1. Needs n >= 4; NaN for a constant tensor.
  """
  w = np.asarray(w, np.float64).ravel()
  n = w.size
  if n < 4:
    raise ValueError(f"bimodality_coefficient needs at least 4 values, got {n}")
  c = w - w.mean()
  m2, m3, m4 = (np.mean(c ** k) for k in (2, 3, 4))
  with np.errstate(divide="ignore", invalid="ignore"):
    g1, g2 = m3 / m2 ** 1.5, m4 / m2 ** 2 - 3.0
  skew = g1 * np.sqrt(n * (n - 1)) / (n - 2)
  excess = ((n + 1) * g2 + 6.0) * (n - 1) / ((n - 2) * (n - 3))
  return float((skew ** 2 + 1.0) / (excess + 3.0 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def zero_density_ratio(w, bins: int = ZERO_DENSITY_BINS,
                       span: float = ZERO_DENSITY_RANGE) -> float:
  """The histogram's height at 0 over its lower mode.

  Histogram: ``bins`` (odd) equal bins on ``[-span * s, span * s]``, ``s = std(w)`` (divisor
  N), so that the middle bin ``[-h/2, h/2)`` (``h = 2 span s / bins``) is centred on 0; values
  outside the range are left out. With ``c_0`` the middle bin's count, ``L`` the largest count
  among the bins below it and ``R`` among those above it,

      ratio = c_0 / min(L, R)

  About 1 for a flat top (uniform), a little above 1 for a peak at 0 (Gaussian: 1.02 with the
  defaults), below 1 for a valley between two modes (two-Gaussian mixture at +-1, std 0.54:
  0.37), 0 for a two-point distribution, and far above 1 for a spike at zero. NaN when one
  side is empty.
  """
  if bins % 2 != 1:
    raise ValueError(f"zero_density_ratio needs an odd number of bins (one centred on 0), "
                     f"got {bins}")
  w = np.asarray(w, np.float64).ravel()
  edge = span * np.std(w)
  counts, _ = np.histogram(w, bins=bins, range=(-edge, edge))
  middle = bins // 2
  lower_mode = min(counts[:middle].max(), counts[middle + 1:].max())
  return float(counts[middle] / lower_mode) if lower_mode else float("nan")


def layer_stats(w, view: str = "standardized", threshold: float = NEAR_ZERO) -> dict[str, float]:
  """Every measure of one layer in one view: ``near_zero``, ``coefficient``, ``zero_density``
  and ``kurtosis`` (``losses.kurtosis``, the regularizer's definition)."""
  v = view_of(w, view)
  return {"near_zero": near_zero_share(v, threshold), "coefficient": bimodality_coefficient(v),
          "zero_density": zero_density_ratio(v), "kurtosis": float(_kurtosis(v))}


def layer_report(params: Any, layer_paths: Sequence[str],
                 threshold: float = NEAR_ZERO) -> dict[str, float]:
  """Scalars to log per layer, by ``/``-joined parameter path (e.g. ``models.wdm_layers`` or
  ``models.kurtosis_layers``): on the standardized view (what IR-Net's sign() sees)
  ``bimodality/<path>/near_zero``, ``.../coefficient``, ``.../zero_density`` and
  ``.../kurtosis_standardized``, and the raw latents' ``.../kurtosis_latent``. Host-side
  (reads the weights back); meant for a run's start and its checkpoints, not every step."""
  report = {}
  for path, w in losses.kernels_at(params, layer_paths).items():
    stats = layer_stats(w, "standardized", threshold)
    prefix = f"bimodality/{path}/"
    report.update({prefix + name: stats[name]
                   for name in ("near_zero", "coefficient", "zero_density")})
    report[prefix + "kurtosis_standardized"] = stats["kurtosis"]
    report[prefix + "kurtosis_latent"] = float(_kurtosis(w))
  return report
