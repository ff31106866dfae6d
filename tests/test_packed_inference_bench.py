"""bench/packed_inference.py --whole_model end to end at a tiny size: the packed predictor,
the float forward and the folded float forward are checked equal, and the JSON has its
fields. No timing is asserted."""

import json
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import packed_inference as bench  # noqa: E402

PATHS = ("float", "float_folded", "packed", "packed_unshared")


def test_check_equal_refuses_another_class():
  logits = np.array([[1.0, 0.5], [0.2, 0.3]])
  with pytest.raises(AssertionError, match="packed differs"):
    bench.check_equal({"float": logits, "float_folded": logits, "packed": logits[:, ::-1],
                       "packed_unshared": logits[:, ::-1]})
  with pytest.raises(AssertionError, match="packed_unshared differs"):
    bench.check_equal({"float": logits, "float_folded": logits, "packed": logits,
                       "packed_unshared": logits[:, ::-1]})


@pytest.mark.slow  # about 25 s on 2 cores: three models compiled
def test_whole_model_outputs_checked_equal_and_json_written(tmp_path):
  out = tmp_path / "whole.json"
  bench.main(["--whole_model", "--models=resnet20", "--batches=2", "--reps=1", "--rounds=2",
              "--model_kwargs", '{"stage_sizes": [1, 1, 1]}', f"--out={out}"])
  results = json.loads(out.read_text())
  for field in ("date", "machine", "jax", "command", "load_average_before",
                "load_average_after"):
    assert field in results
  assert "--whole_model" in results["command"]
  (row,) = results["rows"]
  assert row["model"] == "resnet20" and row["batch"] == 2
  assert row["outputs_checked_equal"]
  for pair in ("packed_vs_float_folded", "packed_vs_float", "packed_unshared_vs_packed"):
    assert row["checks"][pair]["max_difference_relative"] <= 1e-4
    assert row["checks"][pair]["same_class"] == 1
  for path in PATHS:
    assert len(row[f"{path}_ms_per_round"]) == 2
  for path in ("float", "float_folded", "packed_unshared"):
    assert len(row[f"{path}_over_packed_per_round"]) == 2
    assert row[f"{path}_over_packed_median"] > 0 and row[f"{path}_over_packed_best"] > 0


def test_one_layer_alternates_rounds_and_takes_the_median_ratio():
  shape = {"input_shape": [8, 8, 16], "kernel_size": [3, 3], "strides": 1, "padding": "SAME"}
  row = bench.bench_layer(shape, 32, batch=2, reps=1, rounds=3, max_round_s=20.0,
                          rng=np.random.default_rng(0))  # raises if the paths differ
  assert row["rounds"] == 3
  floats, packs = row["float_ms_per_round"], row["packed_ms_per_round"]
  assert len(floats) == len(packs) == 3
  ratios = [f / p for f, p in zip(floats, packs)]
  np.testing.assert_allclose(row["speedup_per_round"], ratios)
  assert row["speedup"] == pytest.approx(sorted(ratios)[1])
  assert row["float_ms"] == pytest.approx(sorted(floats)[1])
  assert row["float32_bytes"] == 3 * 3 * 16 * 32 * 4
  assert row["packed_bytes"] == 32 * 9 * 4  # 16 channels: one (half-full) word a position
