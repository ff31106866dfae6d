"""bmd_jax.core.bimodality against independent numpy/scipy computations, on known distributions:
Gaussian, uniform, a two-Gaussian mixture and a two-point distribution."""

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from bmd_jax.core import bimodality

R = 0.54  # the mixture's component std, components at +-1: kurtosis 1.8 (docs/METHOD.md sec. 3)
N = 400_000


def sample(name, n, seed=0):
  rng = np.random.default_rng(seed)
  if name == "gaussian":
    return rng.normal(size=n)
  if name == "uniform":
    return rng.uniform(-1, 1, n)
  if name == "mixture":
    return rng.choice([-1.0, 1.0], n) + R * rng.normal(size=n)
  return rng.choice([-1.0, 1.0], n)  # two-point


DISTRIBUTIONS = ("gaussian", "uniform", "mixture", "two_point")


def cdf(name):
  """Each distribution's CDF in units of its own standard deviation."""
  if name == "gaussian":
    return scipy.stats.norm.cdf
  if name == "uniform":
    return scipy.stats.uniform(-np.sqrt(3), 2 * np.sqrt(3)).cdf
  if name == "mixture":
    s = np.sqrt(1 + R ** 2)
    return lambda x: 0.5 * (scipy.stats.norm.cdf((x * s - 1) / R)
                            + scipy.stats.norm.cdf((x * s + 1) / R))
  return lambda x: 0.5 * (np.asarray(x) >= -1) + 0.5 * (np.asarray(x) >= 1)


def binomial_tolerance(p, n):
  return 5 * np.sqrt(max(p * (1 - p), 1e-12) / n) + 1e-12


# --- near-zero share ---------------------------------------------------------------------


@pytest.mark.parametrize("name", DISTRIBUTIONS)
def test_near_zero_share_matches_the_distribution(name):
  w = sample(name, N)
  expected = cdf(name)(0.1) - cdf(name)(-0.1)
  assert bimodality.near_zero_share(w) == pytest.approx(expected,
                                                        abs=binomial_tolerance(expected, N))


def test_near_zero_share_reference_values():
  assert bimodality.near_zero_share(sample("gaussian", N)) == pytest.approx(
      scipy.special.erf(0.1 / np.sqrt(2)), abs=0.002)
  assert bimodality.near_zero_share(sample("uniform", N)) == pytest.approx(0.1 / np.sqrt(3),
                                                                           abs=0.002)


def test_near_zero_share_is_measured_from_zero_in_std_units():
  w = np.array([-3.0, -0.05, 0.0, 0.05, 2.0, 4.0, -1.0, 0.5])
  threshold = 0.1 * np.sqrt(np.mean((w - w.mean()) ** 2))
  assert bimodality.near_zero_share(w) == np.count_nonzero(np.abs(w) < threshold) / w.size
  assert bimodality.near_zero_share(3.0 * w) == bimodality.near_zero_share(w)


# --- Sarle's bimodality coefficient --------------------------------------------------------


def scipy_coefficient(w):
  n = w.size
  skew = scipy.stats.skew(w, bias=False)
  excess = scipy.stats.kurtosis(w, fisher=True, bias=False)
  return (skew ** 2 + 1) / (excess + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3)))


@pytest.mark.parametrize("name", DISTRIBUTIONS + ("skewed",))
@pytest.mark.parametrize("n", [7, 60, 5000])
def test_coefficient_matches_scipys_bias_corrected_moments(name, n):
  w = (np.random.default_rng(n).exponential(size=n) if name == "skewed"
       else sample(name, n, seed=n + 1))
  assert w.std() > 0  # a constant sample has no coefficient
  assert bimodality.bimodality_coefficient(w) == pytest.approx(scipy_coefficient(w), rel=1e-10)


@pytest.mark.parametrize("name, limit", [("gaussian", 1 / 3), ("uniform", 5 / 9),
                                         ("mixture", 5 / 9), ("two_point", 1.0)])
def test_coefficient_tends_to_one_over_the_kurtosis_for_symmetric_distributions(name, limit):
  assert bimodality.bimodality_coefficient(sample(name, N)) == pytest.approx(limit, abs=0.01)


# --- density at zero relative to the modes -----------------------------------------------


def independent_zero_ratio(w, bins=31, span=3.0):
  """Bins counted one by one with their own edges (half-open, as np.histogram's)."""
  s = np.std(w)
  edges = [-span * s + k * 2 * span * s / bins for k in range(bins + 1)]
  counts = [np.count_nonzero((w >= lo) & (w < hi)) for lo, hi in zip(edges[:-1], edges[1:])]
  counts[-1] += np.count_nonzero(w == edges[-1])
  m = bins // 2
  return counts[m] / min(max(counts[:m]), max(counts[m + 1:]))


@pytest.mark.parametrize("name", ("gaussian", "uniform", "mixture"))
def test_zero_density_ratio_counts_as_written(name):
  w = sample(name, 5000, seed=3)
  assert bimodality.zero_density_ratio(w) == pytest.approx(independent_zero_ratio(w), rel=1e-12)
  assert bimodality.zero_density_ratio(w, bins=11, span=2.0) == pytest.approx(
      independent_zero_ratio(w, 11, 2.0), rel=1e-12)


@pytest.mark.parametrize("name", ("gaussian", "mixture"))
def test_zero_density_ratio_matches_the_distribution(name):
  edges = np.linspace(-3, 3, 32)
  mass = np.diff(cdf(name)(edges))
  expected = mass[15] / min(mass[:15].max(), mass[16:].max())
  assert bimodality.zero_density_ratio(sample(name, N)) == pytest.approx(expected, rel=0.03)


def test_zero_density_ratio_of_flat_two_point_and_spiked_distributions():
  assert bimodality.zero_density_ratio(sample("uniform", N)) == pytest.approx(1.0, abs=0.03)
  assert bimodality.zero_density_ratio(sample("two_point", N)) == 0.0
  # A spike at zero (a tenth of the weights exactly 0) makes the middle bin the highest.
  spiked = np.concatenate([sample("mixture", N), np.zeros(N // 10)])
  assert bimodality.zero_density_ratio(spiked) == pytest.approx(independent_zero_ratio(spiked))
  assert bimodality.zero_density_ratio(spiked) > 1.5


def test_zero_density_ratio_needs_an_odd_number_of_bins():
  with pytest.raises(ValueError, match="odd number of bins"):
    bimodality.zero_density_ratio(sample("gaussian", 100), bins=30)


# --- the view sign() sees, and the report -------------------------------------------------


def numpy_standardized(w):
  flat = w.reshape(-1, w.shape[-1])
  return ((flat - flat.mean(0)) / flat.std(0, ddof=1)).reshape(w.shape)


def channels_of_different_scales(seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(3, 3, 32, 8)) * np.geomspace(0.05, 5, 8) + np.arange(8)).astype(
      np.float32)


def test_the_standardized_view_is_each_channel_standardized():
  w = channels_of_different_scales()
  np.testing.assert_allclose(bimodality.view_of(w), numpy_standardized(w.astype(np.float64)),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(bimodality.view_of(w, "latent"), w.astype(np.float64))
  with pytest.raises(ValueError, match="unknown view"):
    bimodality.view_of(w, "binary")


def test_layer_stats_on_the_standardized_view_see_each_channels_shape():
  # Two-point channels of different scales and offsets: the raw tensor has no empty middle,
  # each standardized channel is exactly +-1.
  rng = np.random.default_rng(1)
  w = (rng.choice([-1.0, 1.0], (3, 3, 16, 6)) * np.geomspace(0.1, 10, 6) + np.arange(6))
  stats = bimodality.layer_stats(w.astype(np.float32))
  v = numpy_standardized(w)
  assert stats["near_zero"] == 0.0 and stats["zero_density"] == 0.0
  assert stats["coefficient"] == pytest.approx(scipy_coefficient(v.ravel()), rel=1e-5)
  latent = bimodality.layer_stats(w, "latent")
  assert latent["coefficient"] < stats["coefficient"]


def test_layer_report_names_every_layer_and_measure():
  params = {"a": {"conv": {"latent_kernel": jnp.asarray(channels_of_different_scales(0))}},
            "b": {"latent_kernel": jnp.asarray(channels_of_different_scales(1))}}
  paths = ["a/conv/latent_kernel", "b/latent_kernel"]
  report = bimodality.layer_report(params, paths)
  measures = ("near_zero", "coefficient", "zero_density", "kurtosis_standardized",
              "kurtosis_latent")
  assert set(report) == {f"bimodality/{p}/{m}" for p in paths for m in measures}
  w = np.asarray(params["b"]["latent_kernel"], np.float64)
  v = numpy_standardized(w).ravel()
  n = v.size
  kurt = np.mean((v - v.mean()) ** 4) / (np.sum((v - v.mean()) ** 2) / (n - 1)) ** 2
  assert report["bimodality/b/latent_kernel/kurtosis_standardized"] == pytest.approx(kurt, 1e-5)
  assert report["bimodality/b/latent_kernel/coefficient"] == pytest.approx(
      scipy_coefficient(v), rel=1e-5)
  assert report["bimodality/b/latent_kernel/near_zero"] == pytest.approx(
      np.mean(np.abs(v) < 0.1 * v.std()), abs=1.5 / n)
  raw = w.ravel()
  raw_kurt = np.mean((raw - raw.mean()) ** 4) / np.var(raw, ddof=1) ** 2
  # losses.kurtosis computes in float32 (jax without x64).
  assert report["bimodality/b/latent_kernel/kurtosis_latent"] == pytest.approx(raw_kurt, 1e-5)
  assert all(isinstance(v, float) for v in report.values())
