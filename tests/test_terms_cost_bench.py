"""bench/terms_cost.py's per-round shares: the issue's definition of what the BD-BNN terms cost,
(full - teacher - ce) / ce, and kurtosis alone, (ce_kurt - ce) / ce, round by round."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))

import terms_cost  # noqa: E402


def test_shares_are_taken_round_by_round():
  ms = {"ce": [100.0, 200.0], "ce_kurt": [110.0, 200.0], "full": [150.0, 260.0],
        "teacher": [40.0, 50.0]}
  got = terms_cost.shares(ms)
  assert got["terms"] == pytest.approx([0.10, 0.05])
  assert got["kurtosis"] == pytest.approx([0.10, 0.0])
