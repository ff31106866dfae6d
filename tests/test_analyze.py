"""python -m bmd_jax.tools.analyze on a short digits run: its files, and its table against losses."""

import json
import os
import re
import subprocess
import sys

import matplotlib.pyplot as plt
import ml_collections
import numpy as np
import pytest
import scipy.stats

from bmd_jax.tools import analyze
from bmd_jax.infra import checkpoint
from bmd_jax.core import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_analyze_compares_two_workdirs_on_one_figure(digits_run, tmp_path):
  _, workdir = digits_run
  out = str(tmp_path / "compared")
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.analyze", f"--workdir={workdir}", f"--workdir={workdir}",
       "--labels=first,second", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  with open(os.path.join(out, "analysis.json")) as f:
    record = json.load(f)
  assert list(record["runs"]) == ["first", "second"]
  assert [(r["run"], r["layer"]) for r in record["layers"]] == [
      (run, layer) for run in ("first", "second") for layer in ("conv0", "conv1", "conv2")]
  assert "| second | train | conv2 |" in result.stdout
  for name in ("hist_train.png", "kurtosis.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0

  # The figure of the checkpoint itself: its end kurtosis and the config's target.
  fig = analyze.kurtosis_figure([analyze.load_run(workdir, "digits")])
  variables = checkpoint.read_variables(checkpoint.choose_checkpoint(workdir))
  expected = [reference_kurtosis(w) for w in losses.binarized_kernels(variables["params"]).values()]
  np.testing.assert_allclose(labelled(fig.axes[0], "end").get_ydata(), expected, rtol=1e-5)
  labelled(fig.axes[0], "kurtosis target 1.8")


def test_several_workdirs_need_an_output_folder():
  with pytest.raises(ValueError, match="need --out"):
    analyze.analyze(["runs/a", "runs/b"])


@pytest.mark.slow
def test_analyze_writes_figures_and_the_kurtosis_of_the_checkpoint(digits_run, tmp_path):
  config, workdir = digits_run
  out = str(tmp_path / "analysis")
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.analyze", f"--workdir={workdir}", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  for name in ("hist_train.png", "kurtosis.png", "analysis.json", "analysis.md"):
    path = os.path.join(out, name)
    assert os.path.getsize(path) > 0, name
  with open(os.path.join(out, "hist_train.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"

  with open(os.path.join(out, "analysis.json")) as f:
    record = json.load(f)
  variables = checkpoint.read_variables(checkpoint.choose_checkpoint(workdir))
  expected = {k.removesuffix("/latent_kernel"): float(losses.kurtosis(w))
              for k, w in losses.binarized_kernels(variables["params"]).items()}
  got = {r["layer"]: r["kurtosis_end"] for r in record["layers"] if r["stage"] == "train"}
  assert set(got) == set(expected) == {"conv0", "conv1", "conv2"}
  for layer, value in expected.items():
    assert got[layer] == pytest.approx(value, rel=1e-6), layer
  for r in record["layers"]:
    assert 0 <= r["flip_ratio"] <= 1 and 0 <= r["near_zero_end"] <= 1
    # The kurtosis term (target 1.8) moved every layer's kurtosis from its Gaussian-like start.
    assert r["kurtosis_start"] > 2.0 and abs(r["kurtosis_end"] - 1.8) < abs(
        r["kurtosis_start"] - 1.8)
  info = record["runs"][os.path.basename(workdir)]
  assert info["stages"]["train"]["start_from"].startswith("initialization")
  assert info["stages"]["train"]["kurtosis_targets"] == {
      "conv0": 1.8, "conv1": 1.8, "conv2": 1.8}
  assert "| train | conv0 |" in result.stdout
  del config
  assert np.isfinite([r["kurtosis_end"] for r in record["layers"]]).all()


# ------------------------------------------------------------------------------------------------
# The figures, on runs made up here (no checkpoint): what they show, read through matplotlib's
# objects.

LAYERS = ("block0/conv", "block1/conv", "shortcut/conv")


def reference_kurtosis(w) -> float:
  """losses.kurtosis by scipy (its docstring's identity), independent of bmd_jax."""
  n = np.size(w)
  return float(scipy.stats.kurtosis(np.ravel(w), fisher=False, bias=True) * ((n - 1) / n) ** 2)


def made_up_run(label, seed, target=1.8, weight=1.0, include_shortcuts=True):
  """A run of one stage 'train' whose layers go from Gaussian to more bi-modal weights."""
  rng = np.random.default_rng(seed)
  start = {name: rng.normal(0, 0.1, (3, 3, 4, 8)).astype(np.float32) for name in LAYERS}
  end = {name: (np.sign(w) * 0.1 + 0.3 * w).astype(np.float32) for name, w in start.items()}
  per_layer = isinstance(target, (list, tuple))
  config = ml_collections.ConfigDict({
      "model": {"precision": "binary", "scale_mode": "irnet"},
      "loss": {"kurtosis": {"weight": weight, "target": 1.8 if per_layer else target,
                            "targets": tuple(target) if per_layer else (),
                            "include_shortcuts": include_shortcuts}}})
  # What models.kurtosis_layers would give: definition order, shortcuts kept when asked.
  regularized = [f"{name}/latent_kernel" for name in LAYERS
                 if include_shortcuts or not name.startswith("shortcut")]
  return {"label": label, "workdir": f"runs/{label}", "stages": {"train": {
      "config": config, "start": start, "end": end, "end_step": 100,
      "start_from": "initialization (seed 0)", "start_label": "initialization, seed 0",
      "targets": analyze.kurtosis_targets(config, regularized)}}}


@pytest.fixture(autouse=True)
def close_figures():
  yield
  plt.close("all")


def title_kurtosis(title: str) -> list[tuple[float, float]]:
  return [(float(a), float(b))
          for a, b in re.findall(r"kurtosis (\d+\.\d+) \u2192 (\d+\.\d+)", title)]


def title_coefficient(title: str) -> list[tuple[float, float]]:
  return [(float(a), float(b)) for a, b in re.findall(r"BC (\d+\.\d+) \u2192 (\d+\.\d+)", title)]


def numpy_standardized(w):
  """Each output channel (last axis) centred and divided by its ddof=1 std, in float64."""
  w = np.asarray(w, np.float64)
  flat = w.reshape(-1, w.shape[-1])
  return ((flat - flat.mean(0)) / flat.std(0, ddof=1)).reshape(w.shape)


def sarle(w):
  """Sarle's bimodality coefficient from scipy's bias-corrected skewness and excess kurtosis."""
  w = np.ravel(w)
  n = w.size
  return ((scipy.stats.skew(w, bias=False) ** 2 + 1)
          / (scipy.stats.kurtosis(w, bias=False) + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def labelled(ax, label):
  found = [a for a in ax.lines + ax.collections if a.get_label() == label]
  assert len(found) == 1, (label, [a.get_label() for a in ax.lines + ax.collections])
  return found[0]


def test_kurtosis_targets_follow_the_loss_config():
  assert made_up_run("a", 0)["stages"]["train"]["targets"] == dict.fromkeys(LAYERS, 1.8)
  # A list follows the regularized layers' order; shortcuts left out leave no target.
  run = made_up_run("a", 0, target=[1.6, 2.0], include_shortcuts=False)
  assert run["stages"]["train"]["targets"] == {"block0/conv": 1.6, "block1/conv": 2.0}
  assert made_up_run("a", 0, weight=0.0)["stages"]["train"]["targets"] == {}


def test_histograms_title_each_layer_with_its_kurtosis_and_target():
  run = made_up_run("a", 0, target=[1.6, 2.0, 1.7])
  fig = analyze.histogram_figure([run], "train")
  axes = [ax for ax in fig.axes if ax.get_title()]
  assert [ax.get_title().splitlines()[0] for ax in axes] == list(LAYERS)
  for ax, target in zip(axes, (1.6, 2.0, 1.7)):
    layer = ax.get_title().splitlines()[0]
    weights = run["stages"]["train"]
    [(start, end)] = title_kurtosis(ax.get_title())
    assert start == pytest.approx(reference_kurtosis(weights["start"][layer]), abs=0.005)
    assert end == pytest.approx(reference_kurtosis(weights["end"][layer]), abs=0.005)
    assert f"(target {target:.2f})" in ax.get_title()
    [(bc_start, bc_end)] = title_coefficient(ax.get_title())
    assert bc_start == pytest.approx(sarle(numpy_standardized(weights["start"][layer])),
                                     abs=0.005)
    assert bc_end == pytest.approx(sarle(numpy_standardized(weights["end"][layer])), abs=0.005)
    assert ax.get_xlabel() == "weight standardized per output channel"
    assert ax.get_ylabel() == "density"
    # Start dashed, end solid (a filled end besides, for a single run).
    assert sum(p.get_linestyle() != "solid" for p in ax.patches) == 1
  assert start > 2.5 and end < 2.0  # the made-up layers did move: start and end differ
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ["start: initialization, seed 0", "end: step 100"]
  # Start and end are told apart by line style, not only by colour.
  styles = {h.get_label(): h.get_linestyle() for h in fig.legends[0].legend_handles}
  assert styles["start: initialization, seed 0"] != styles["end: step 100"]


def test_histograms_show_the_standardized_weights():
  run = made_up_run("a", 0)
  weights = run["stages"]["train"]
  # Channels of very different scales and offsets: the raw and standardized views differ.
  for when in ("start", "end"):
    weights[when] = {k: (w * np.geomspace(0.1, 10, 8) + 3.0).astype(np.float32)
                     for k, w in weights[when].items()}
  fig = analyze.histogram_figure([run], "train")
  ax = fig.axes[0]
  layer = LAYERS[0]
  start, end = (numpy_standardized(weights[w][layer]).ravel() for w in ("start", "end"))
  both = np.concatenate([start, end])
  expected, _ = np.histogram(end, bins=np.linspace(both.min(), both.max(), 81), density=True)
  bars = [p for p in ax.patches if type(p).__name__ == "Rectangle"]
  np.testing.assert_allclose([b.get_height() for b in bars], expected, rtol=1e-4, atol=1e-6)


def test_table_rows_measure_both_views_against_numpy():
  rng = np.random.default_rng(4)
  start = rng.normal(0, 1, (3, 3, 16, 8)).astype(np.float32)
  end = (np.sign(start) * 0.5 + 0.2 * start) * np.geomspace(0.1, 10, 8) + np.arange(8)
  row = analyze.layer_row(start, end.astype(np.float32), "irnet", 0.1)
  for when, w in (("start", start), ("end", end)):
    raw, std = np.ravel(w).astype(np.float64), numpy_standardized(w).ravel()
    assert row[f"kurtosis_{when}"] == pytest.approx(reference_kurtosis(raw), rel=1e-5)
    assert row[f"standardized_kurtosis_{when}"] == pytest.approx(reference_kurtosis(std),
                                                                  rel=1e-4)
    assert row[f"near_zero_{when}"] == np.mean(np.abs(raw) < 0.1 * raw.std())
    assert row[f"standardized_near_zero_{when}"] == pytest.approx(
        np.mean(np.abs(std) < 0.1 * std.std()), abs=2 / std.size)
    assert row[f"coefficient_{when}"] == pytest.approx(sarle(raw), rel=1e-5)
    assert row[f"standardized_coefficient_{when}"] == pytest.approx(sarle(std), rel=1e-4)
  # Each standardized end channel is two humps at about +-1 with nothing in between.
  assert row["standardized_near_zero_end"] == 0.0
  assert row["standardized_zero_density_end"] == 0.0 < row["standardized_zero_density_start"]
  table = analyze.markdown_table([{"run": "a", "stage": "train", "layer": "conv", **row}])
  assert "std. BC end" in table and f"| {row['standardized_coefficient_end']:.3f} |" in table


def test_kurtosis_figure_has_labels_start_end_and_the_target_line():
  run = made_up_run("a", 0)
  fig = analyze.kurtosis_figure([run])
  [ax] = fig.axes
  assert ax.get_xlabel() and ax.get_ylabel() == "kurtosis of latent weights"
  assert "train" in ax.get_title()
  assert [t.get_text() for t in ax.get_xticklabels()] == list(LAYERS)
  weights = run["stages"]["train"]
  for when in ("start", "end"):
    expected = [reference_kurtosis(weights[when][layer]) for layer in LAYERS]
    np.testing.assert_allclose(labelled(ax, when).get_ydata(), expected, rtol=1e-5)
  assert list(labelled(ax, "kurtosis target 1.8").get_ydata()) == [1.8, 1.8]


def test_per_layer_targets_are_drawn_over_their_layers():
  fig = analyze.kurtosis_figure([made_up_run("a", 0, target=[1.6, 2.0, 1.7])])
  segments = labelled(fig.axes[0], "kurtosis target").get_segments()
  # One short line per layer, centred on the layer's tick, at its target.
  assert [s[0][1] for s in segments] == pytest.approx([1.6, 2.0, 1.7])
  assert [np.mean(s[:, 0]) for s in segments] == pytest.approx([0, 1, 2])


def test_two_runs_give_two_labelled_series_and_their_own_targets():
  a, b = made_up_run("plain", 0, weight=0.0), made_up_run("bd", 1, target=1.6)
  fig = analyze.kurtosis_figure([a, b])
  ax = fig.axes[0]
  for run in (a, b):
    end = labelled(ax, f"{run['label']} end")
    expected = [reference_kurtosis(run["stages"]["train"]["end"][layer]) for layer in LAYERS]
    np.testing.assert_allclose(end.get_ydata(), expected, rtol=1e-5)
    labelled(ax, f"{run['label']} start")
  # The runs sit side by side at each layer, in different colours.
  xa, xb = labelled(ax, "plain end").get_xdata(), labelled(ax, "bd end").get_xdata()
  assert (xa < xb).all() and (xb - xa < 0.5).all()
  assert labelled(ax, "plain end").get_color() != labelled(ax, "bd end").get_color()
  # Only the run with the kurtosis term has a target, named after it.
  targets = [a.get_label() for a in ax.lines + ax.collections if "target" in a.get_label()]
  assert targets == ["kurtosis target 1.6 (bd)"]

  fig = analyze.histogram_figure([a, b], "train")
  title = fig.axes[0].get_title()
  assert "plain: kurtosis" in title and "bd: kurtosis" in title and "(target 1.60)" in title
  assert len(title_kurtosis(title)) == 2
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ["plain start: initialization, seed 0", "plain end: step 100",
                    "bd start: initialization, seed 0", "bd end: step 100"]


def test_runs_with_different_targets_get_one_line_each():
  fig = analyze.kurtosis_figure([made_up_run("x", 0, target=1.8), made_up_run("y", 1)])
  ax = fig.axes[0]
  assert labelled(ax, "kurtosis target 1.8 (x, y)").get_color() == "black"
  fig = analyze.kurtosis_figure([made_up_run("x", 0, target=1.8),
                                 made_up_run("y", 1, target=[1.6, 2.0, 1.7])])
  ax = fig.axes[0]
  assert labelled(ax, "kurtosis target 1.8 (x)") and labelled(ax, "kurtosis target (y)")


def test_a_run_keeps_its_colour_where_another_lacks_a_stage():
  a, b = made_up_run("a", 0), made_up_run("b", 1)
  b["stages"]["step2"] = b["stages"]["train"]
  fig = analyze.kurtosis_figure([a, b])
  train, step2 = fig.axes
  assert "step2" in step2.get_title()
  assert labelled(step2, "b end").get_color() == labelled(train, "b end").get_color()
  assert not [line for line in step2.lines if line.get_label().startswith("a ")]
  fig = analyze.histogram_figure([a, b], "step2")
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
      "b start: initialization, seed 0", "b end: step 100"]
  assert fig.legends[0].legend_handles[0].get_color() == labelled(train, "b end").get_color()


def test_run_labels():
  assert analyze.run_labels(["runs/a", "x/b/"]) == ["a", "b"]
  assert analyze.run_labels(["a/seed0", "b/seed0"]) == ["a/seed0", "b/seed0"]
  assert analyze.run_labels(["a", "b"], ["plain", "BD-BNN"]) == ["plain", "BD-BNN"]
  with pytest.raises(ValueError, match="one distinct label per workdir"):
    analyze.run_labels(["a", "b"], ["plain"])
