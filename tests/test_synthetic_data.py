"""The synthetic data source (issue 29, item 6): random images and labels of the config's shape
and class count, deterministic from the seed, so a recipe runs end to end without its data; and
the missing-ImageNet message that points to it."""

import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

from bmd_jax.infra import config_files
from bmd_jax.training import input_pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_config(recipe="default.py", **fields):
  config = config_files.load(os.path.join(REPO, "configs", recipe))
  config.dataset = "synthetic"
  config.update(fields)
  return config


def records(source, count=None):
  return [source[i] for i in range(count or len(source))]


def test_shape_classes_and_sizes_follow_the_config():
  config = synthetic_config(image_size=12, channels=3, synthetic_train_examples=40,
                            synthetic_eval_examples=10, synthetic_classes=7)
  datasets = input_pipeline.create_datasets(config)
  info = datasets.info
  assert (info.num_classes, info.image_shape) == (7, (12, 12, 3))
  assert (info.num_train, info.num_eval) == (len(datasets.train), len(datasets.eval)) == (40, 10)
  for record in records(datasets.train) + records(datasets.eval):
    assert record["image"].dtype == np.uint8 and record["image"].shape == (12, 12, 3)
    assert 0 <= record["label"] < 7
  labels = [r["label"] for r in records(datasets.train)]
  assert len(set(labels)) > 3  # random labels, not one class
  pixels = np.stack([r["image"] for r in records(datasets.train)])
  assert pixels.min() < 10 and pixels.max() > 245 and 100 < pixels.mean() < 155  # uniform


def test_class_count_of_the_recipe_without_its_data():
  # 0 (the default): the class count of the data set the recipe names, from TFDS's catalog.
  assert input_pipeline.create_datasets(
      synthetic_config("imagenet.py", synthetic_eval_examples=5)).info.num_classes == 1000
  assert input_pipeline.create_datasets(
      synthetic_config("cifar10.py")).info.num_classes == 10


def test_deterministic_from_the_seed_and_the_same_after_pickling():
  def images_and_labels(seed):
    config = synthetic_config(seed=seed, synthetic_train_examples=20, synthetic_eval_examples=8,
                              synthetic_classes=10)
    datasets = input_pipeline.create_datasets(config)
    return [(r["image"], r["label"]) for r in records(datasets.train) + records(datasets.eval)]

  first, again, other = images_and_labels(0), images_and_labels(0), images_and_labels(1)
  for (a, la), (b, lb) in zip(first, again):
    np.testing.assert_array_equal(a, b)
    assert la == lb
  assert not all(np.array_equal(a, b) for (a, _), (b, _) in zip(first, other))
  train = input_pipeline.create_datasets(synthetic_config(synthetic_train_examples=20)).train
  clone = pickle.loads(pickle.dumps(train))  # as grain's worker processes get it
  np.testing.assert_array_equal(clone[3]["image"], train[3]["image"])
  # The eval split is not the train split again.
  datasets = input_pipeline.create_datasets(synthetic_config())
  assert not np.array_equal(datasets.train[0]["image"], datasets.eval[0]["image"])


@pytest.mark.parametrize("field, value", [("synthetic_train_examples", 0),
                                          ("synthetic_eval_examples", -1),
                                          ("synthetic_classes", -2)])
def test_bad_sizes_are_named(field, value):
  with pytest.raises(ValueError, match=f"config.{field}={value}"):
    input_pipeline.create_datasets(synthetic_config(**{field: value}))


def test_not_prepared_message_points_to_synthetic_without_tfds_warnings(tmp_path, caplog):
  from bmd_jax.data import tfds_source

  os.makedirs(tmp_path / "imagenet2012" / "5.1.0")  # a version folder left without its files
  with pytest.raises(tfds_source.DatasetNotPreparedError) as info:
    tfds_source.tfds_sources("imagenet2012", data_dir=str(tmp_path))
  assert "--config.dataset=synthetic" in str(info.value).splitlines()[-1]
  assert "dataset_info.json" not in caplog.text  # TFDS's warning, once per lookup


def run_main(workdir, *arguments, env=None):
  return subprocess.run(
      [sys.executable, "-m", "bmd_jax.main", f"--workdir={workdir}", *arguments],
      cwd=REPO, env={**os.environ, "PYTHONPATH": REPO, **(env or {})}, capture_output=True,
      text=True, timeout=300)


@pytest.mark.slow
def test_imagenet_recipe_runs_end_to_end_on_synthetic_data(tmp_path):
  # Both of the recipe's stages, shrunk to fit a 2-core CPU: a few steps of 32x32 images,
  # compiled with XLA's cheapest code generation (tests/narrow_models.py's FAST_COMPILE).
  fast = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
          "--xla_cpu_use_fusion_emitters=false")
  result = run_main(tmp_path, "--config=configs/imagenet.py", "--config.dataset=synthetic",
                    "--config.image_size=32", "--config.batch_size=8",
                    "--config.eval_batch_size=8", "--config.num_train_steps=2",
                    "--config.synthetic_train_examples=32",
                    "--config.synthetic_eval_examples=8", "--config.log_every_steps=1",
                    env={"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {fast}"})
  assert result.returncode == 0, result.stderr[-3000:]
  logged = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert {r.get("stage") for r in logged} >= {"step1", "step2"}, logged[:3]


@pytest.mark.slow
def test_missing_imagenet_says_how_to_prepare_it_and_how_to_try_without(tmp_path):
  data_dir = tmp_path / "tensorflow_datasets"
  os.makedirs(data_dir / "imagenet2012" / "5.1.0")  # a variant folder left without its files
  result = run_main(tmp_path / "run", "--config=configs/imagenet.py",
                    env={"TFDS_DATA_DIR": str(data_dir)})
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "dataset_info.json" not in result.stderr, result.stderr[-3000:]  # TFDS's warnings
  assert "download_and_prepare" in result.stderr and "ILSVRC2012_img_train.tar" in result.stderr
  assert "--config.dataset=synthetic" in result.stderr
  assert len(result.stderr.strip().splitlines()) <= 8, result.stderr
