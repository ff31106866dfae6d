"""tools.compare: run folders read, runs grouped into variants, and the per-variant figures
and Welch intervals against scipy.stats (the reference the fallback quantile must match)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from bmd_jax.tools import compare, welch

STEPS_PER_EPOCH = 10


def _write_run(root, name, finals, *, stages="step1,step2", num_epochs=None, overrides=None,
               drop_last=None, best=None, last_step=None, extra_lines=()):
  """A workdir as training leaves it: config.json, and metrics.jsonl with one evaluation of
  the last stage per epoch (`finals`: their top-1 as fractions), after a train record and a
  step-1 evaluation that must not count."""
  folder = root / name
  folder.mkdir()
  config = {"stages": stages, "num_epochs": num_epochs or float(len(finals)),
            "num_train_steps": 0, "seed": 0, "model": {"dtype": "float32"},
            "loss": {"kurtosis": {"target": 1.8}},
            "stage_overrides": overrides or {s: {} for s in stages.split(",")}}
  (folder / "config.json").write_text(json.dumps(config))
  last_stage = stages.split(",")[-1]
  lines = [{"step": 10, "epoch": 1.0, "stage": "step1", "eval/accuracy": 0.01,
            "eval/best_accuracy": 0.01, "eval/best_epoch": 1.0},
           {"step": 5, "epoch": 0.5, "stage": last_stage, "train/loss": 2.0}]
  for i, top1 in enumerate(finals):
    step = (i + 1) * STEPS_PER_EPOCH if last_step is None or i < len(finals) - 1 else last_step
    record = {"step": step, "epoch": step / STEPS_PER_EPOCH, "stage": last_stage,
              "eval/loss": 1.0, "eval/accuracy": top1,
              "eval/best_accuracy": max(finals[:i + 1]) if best is None else best,
              "eval/best_epoch": 1.0}
    if drop_last is not None:
      record.update({"eval/accuracy_drop_last": drop_last[i], "eval/examples_drop_last": 9984.0})
    lines.append(record)
  text = "".join(json.dumps(r) + "\n" for r in lines) + "".join(extra_lines)
  (folder / "metrics.jsonl").write_text(text)
  return str(folder)


def test_means_sds_and_welch_intervals_match_scipy(tmp_path):
  plain = [0.70, 0.712, 0.695, 0.705]
  bd_bnn = [0.688, 0.70, 0.671]
  folders = [_write_run(tmp_path, f"plain_seed{i}", [0.5, v]) for i, v in enumerate(plain)]
  folders += [_write_run(tmp_path, f"bd_bnn_seed{i}", [0.6, v]) for i, v in enumerate(bd_bnn)]
  result = compare.compare(compare.read_runs(folders), baseline="plain", goal_half_width=0.7)
  final = result["figures"]["final"]
  for variant, values in (("plain", plain), ("bd_bnn", bd_bnn)):
    summary = final["variants"][variant]
    assert summary.n == len(values)
    assert summary.mean == pytest.approx(100 * np.mean(values), abs=1e-9)
    assert summary.sd == pytest.approx(100 * np.std(values, ddof=1), abs=1e-9)
  reference = stats.ttest_ind(100 * np.array(bd_bnn), 100 * np.array(plain), equal_var=False)
  interval = reference.confidence_interval(0.95)
  difference = final["differences"]["bd_bnn"]
  assert difference.difference == pytest.approx(100 * (np.mean(bd_bnn) - np.mean(plain)))
  assert (difference.low, difference.high) == pytest.approx((interval.low, interval.high))
  assert difference.df == pytest.approx(reference.df)
  # the runs per variant for +-0.7 at these sds: the first n whose expected interval fits
  needed = final["seeds_needed"]["bd_bnn"]
  sds = 100 * np.std(bd_bnn, ddof=1), 100 * np.std(plain, ddof=1)
  def half_width(n):
    spread = (sds[0] ** 2 + sds[1] ** 2) / n
    df = spread ** 2 / ((sds[0] ** 2 / n) ** 2 / (n - 1) + (sds[1] ** 2 / n) ** 2 / (n - 1))
    return stats.t.ppf(0.975, df) * np.sqrt(spread)
  assert half_width(needed) <= 0.7 < half_width(needed - 1)
  # best: eval/best_accuracy at the last evaluation, here the higher of the two epochs
  assert result["figures"]["best"]["variants"]["plain"].mean == pytest.approx(
      100 * np.mean(plain))
  assert "final_drop_last" not in result["figures"]  # these records predate the figure


def test_the_interval_without_scipy_is_scipys(monkeypatch):
  for df in (1.0, 2.5, 4.97, 10.0, 123.4):
    assert welch._t_quantile_by_bisection(0.975, df) == pytest.approx(
        stats.t.ppf(0.975, df), rel=1e-9)
  a, b = [70.1, 69.2, 71.0, 70.4, 69.9, 70.7], [68.5, 69.9, 68.1]
  monkeypatch.setitem(sys.modules, "scipy", None)  # `from scipy import stats` now fails
  with pytest.raises(ImportError):
    from scipy import stats as _  # pylint: disable=import-outside-toplevel,reimported
  difference = welch.welch_difference(welch.summarize(a), welch.summarize(b))
  interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
  assert (difference.low, difference.high) == pytest.approx((interval.low, interval.high),
                                                            rel=1e-9)


def test_one_run_gives_no_interval_and_says_so(tmp_path):
  folders = [_write_run(tmp_path, name, [top1]) for name, top1 in (
      ("plain_seed0", 0.70), ("plain_seed1", 0.71), ("wdm_only_seed0", 0.69))]
  result = compare.compare(compare.read_runs(folders))
  assert result["baseline"] == "plain"  # the first run's variant
  difference = result["figures"]["final"]["differences"]["wdm_only"]
  assert difference.low is None and difference.difference == pytest.approx(-1.5)
  text = compare.table(result)
  assert "NOT LIKE FOR LIKE" not in text
  (tmp_path / "plain_seed1" / "run_info.json").write_text(json.dumps({"device_kind": "cpu"}))
  assert ("NOT LIKE FOR LIKE: the runs last trained on different devices or dtypes "
          "(?, float32: 2 runs; cpu, float32: 1 run)") in compare.table(
              compare.compare(compare.read_runs(folders)))
  assert "-1.50, no interval: n = 1 against 2, and each side needs 2 or more runs" in text
  assert json.loads(json.dumps(compare.as_json(result, compare.read_runs(folders)))
                    )["figures"]["final"]["variants"]["wdm_only"]["sd"] is None


def test_drop_last_figures_final_and_best(tmp_path):
  folder = _write_run(tmp_path, "irnet_seed0", [0.80, 0.82, 0.81],
                      drop_last=[0.801, 0.823, 0.812])
  (run,) = compare.read_runs([folder])
  assert run.figures["final_drop_last"] == pytest.approx(81.2)
  assert run.figures["best_drop_last"] == pytest.approx(82.3)  # the best epoch by that figure
  assert run.figures["best"] == pytest.approx(82.0)
  assert run.drop_last_examples == 9984
  assert "full eval batches only (IR-Net's drop_last), 9,984 test images" in compare.table(
      compare.compare([run]))


@pytest.mark.parametrize("name, variant", [
    ("bd_bnn_seed3", "bd_bnn"), ("bd_bnn-seed12", "bd_bnn"), ("kurt.seed0", "kurt"),
    ("full_precision", "full_precision"), ("target_1.4_seed2", "target_1.4"),
    ("bdbnn_s3", "bdbnn"), ("wdm_only_s10", "wdm_only"), ("plain_seeds", "plain_seeds")])
def test_a_runs_variant_is_its_name_less_the_seed(tmp_path, name, variant):
  assert compare.variant_of(str(tmp_path / name), {}) == variant


def test_grouping_by_a_stage_config_field_and_by_pattern(tmp_path):
  def target(value):
    return {"step1": {}, "step2": {"loss": {"kurtosis": {"target": value}}}}
  folders = [_write_run(tmp_path, f"run{i}", [0.7 + i / 100], overrides=target(t))
             for i, t in enumerate([1.2, 1.4, 1.2, 1.4, 1.8])]
  runs = compare.read_runs(folders, group_by=["loss.kurtosis.target"])
  assert [r.variant for r in runs] == [f"loss.kurtosis.target={t}"
                                       for t in (1.2, 1.4, 1.2, 1.4, 1.8)]
  by_variant = compare.compare(runs)["figures"]["final"]["variants"]
  assert by_variant["loss.kurtosis.target=1.4"].mean == pytest.approx(72.0)
  runs = compare.read_runs(folders, pattern=r"run(?P<variant>\d)")
  assert [r.variant for r in runs] == ["0", "1", "2", "3", "4"]
  with pytest.raises(compare.RunFolderError, match="no field 'loss.kurtosis.tagret'"):
    compare.read_runs(folders, group_by=["loss.kurtosis.tagret"])
  with pytest.raises(compare.RunFolderError, match="none of the runs' variants"):
    compare.compare(runs, baseline="plain")


def test_unfinished_and_unreadable_lines(tmp_path):
  # last evaluation at step 25 of 30: refused unless asked for; a torn last line is skipped
  folder = _write_run(tmp_path, "plain_seed0", [0.6, 0.7], num_epochs=3.0, last_step=25,
                      extra_lines=['{"step": 26, "stage": "ste'])
  with pytest.raises(compare.RunFolderError, match="unfinished .*step 25 of 30"):
    compare.read_runs([folder])
  (run,) = compare.read_runs([folder], allow_unfinished=True)
  assert run.figures["final"] == pytest.approx(70.0)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "bmd_jax.tools.compare", *args],
                        capture_output=True, text=True, timeout=120,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_command_line_table_json_and_a_folder_without_evaluation(tmp_path):
  folders = [_write_run(tmp_path, f"{v}_seed{i}", [0.5 + i / 100 + (v == "b") / 50])
             for v in "ab" for i in range(2)]
  done = _cli(*folders, "--baseline=a", f"--json={tmp_path / 'out.json'}")
  assert done.returncode == 0, done.stderr
  assert "+2.00 [" in done.stdout  # b minus a
  written = json.loads((tmp_path / "out.json").read_text())
  assert written["figures"]["final"]["differences"]["b"]["difference"] == pytest.approx(2.0)
  empty = tmp_path / "c_seed0"
  empty.mkdir()
  (empty / "config.json").write_text(json.dumps({"stages": "train"}))
  (empty / "metrics.jsonl").write_text(json.dumps({"step": 1, "stage": "train",
                                                   "train/loss": 1.0}) + "\n")
  done = _cli(*folders, str(empty))
  assert done.returncode == 1
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and str(empty) in lines[0] and "no evaluation" in lines[0], lines
