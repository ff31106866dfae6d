"""Images per second delivered by the input pipeline (training/input_pipeline.py), per worker count.

Cases:
- cifar10 folder: the CIFAR-10 JPEG folder (BMD_CIFAR10_DIR, default ../shared/data/cifar10-jpeg),
  CIFAR augmentation, batch 128; every image decoded on every read;
- cifar10 cached: the same with config.cache_decoded_images (decoded once at start-up; the
  start-up time is reported apart);
- imagenet-size: JPEGs of 500x375 that the benchmark writes into a temporary folder, ImageNet
  augmentation (random-resized crop to 224, flip, lighting), batch 32; and the eval transform.

    python bench/input_pipeline.py [--workers=0,1,2] [--seconds=8] [--cases=...] [--rounds=3]

Every round measures every case and worker count once; the table gives each row's medians
over the rounds (a CPU time that could not be read in some round, NaN in measure, is NaN).

The train step it has to keep fed: a binary ResNet-20 on this 2-core CPU takes about 200-300
images/s at batch 128 (docs/BENCHMARKS.md, "Input pipeline"), so the goal is >= 10x that.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from bmd_jax.training import input_pipeline  # noqa: E402
from bmd_jax.configs import default  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = ("cifar10_folder", "cifar10_cached", "imagenet_train", "imagenet_eval",
         "cifar10_folder_grain_default_read")

_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "worker process counts to measure")
_SECONDS = flags.DEFINE_float("seconds", 8.0, "measuring time per row, after the first batch")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternating rounds over all cases")
_CASES = flags.DEFINE_list("cases", list(CASES[:4]), f"cases among {CASES}")
_CIFAR_DIR = flags.DEFINE_string(
    "cifar10_dir", os.environ.get("BMD_CIFAR10_DIR",
                                  os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg")),
    "the CIFAR-10 image folder")
_IMAGENET_IMAGES = flags.DEFINE_integer("imagenet_images", 200, "ImageNet-size JPEGs to write")


def write_imagenet_like(root: str, count: int) -> str:
  """count 500x375 JPEGs (quality 90, ~65 KB, photo-like: smooth shapes plus noise) in each of
  root/train and root/val, in 4 class folders."""
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for i in range(count):
      folder = os.path.join(root, split, f"class{i % 4}")
      os.makedirs(folder, exist_ok=True)
      coarse = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
      smooth = np.asarray(coarse.resize((500, 375), Image.BICUBIC)).astype(np.int16)
      pixels = np.clip(smooth + rng.integers(-12, 13, smooth.shape), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(os.path.join(folder, f"{i}.jpg"), quality=90)
  return root


def cifar_config(data_dir: str, cached: bool):
  config = default.get_config()
  config.update(dict(dataset="image_folder", data_dir=data_dir, image_size=32, channels=3,
                     augment="cifar", mean=(0.4914, 0.4822, 0.4465),
                     std=(0.2023, 0.1994, 0.2010), batch_size=128, eval_batch_size=128))
  config.cache_decoded_images = cached
  config.skip_unreadable_images = False
  return config


def imagenet_config(data_dir: str):
  config = default.get_config()
  config.update(dict(dataset="image_folder", data_dir=data_dir, image_size=224, channels=3,
                     augment="imagenet", mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), batch_size=32, eval_batch_size=32))
  config.cache_decoded_images = False
  config.skip_unreadable_images = False
  return config


def cpu_seconds() -> tuple[float, frozenset]:
  """CPU time of this process (all threads) and of its live child processes (grain's workers),
  from /proc: unlike wall time, it hardly changes when other jobs share the CPUs; and the
  children's ids."""
  total = time.process_time()
  children = multiprocessing.active_children()
  for child in children:
    try:
      with open(f"/proc/{child.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
      total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
      pass
  return total, frozenset(child.pid for child in children)


def wait_for_workers_to_exit(timeout: float = 30.0) -> None:
  """Lets the last loader's workers exit, so that they do not count in the next row."""
  gc.collect()
  deadline = time.time() + timeout
  while multiprocessing.active_children() and time.time() < deadline:
    time.sleep(0.1)


def measure(batches, seconds: float) -> tuple[float, float, float]:
  """(seconds to the first batch, images/s and CPU microseconds per image over the next
  `seconds` of wall time, or the rest of a finite pass; CPU is NaN where workers exited
  before the end, taking their CPU time with them)."""
  start = time.perf_counter()
  next(batches)
  first = time.perf_counter() - start
  images, start, cpu_start = 0, time.perf_counter(), cpu_seconds()
  for batch in batches:
    images += len(batch["label"])
    if time.perf_counter() - start > seconds:
      break
  rate = images / (time.perf_counter() - start)
  cpu_end = cpu_seconds()
  cpu = cpu_end[0] - cpu_start[0] if cpu_end[1] == cpu_start[1] else float("nan")
  return first, rate, cpu / images * 1e6


def measure_case(case: str, tmp: str, rows: dict) -> None:
  """Appends one round's (set-up, first batch, images/s, CPU us/image) to rows[(case, workers)]
  for every worker count."""
  if case.startswith("cifar10"):
    config = cifar_config(_CIFAR_DIR.value, cached=case == "cifar10_cached")
  else:
    if not os.path.isdir(os.path.join(tmp, "imagenet")):
      write_imagenet_like(os.path.join(tmp, "imagenet"), _IMAGENET_IMAGES.value)
    config = imagenet_config(os.path.join(tmp, "imagenet"))
  start = time.perf_counter()
  datasets = input_pipeline.create_datasets(config)
  setup = time.perf_counter() - start
  read_options = input_pipeline._read_options  # pylint: disable=protected-access
  if case.endswith("grain_default_read"):
    input_pipeline._read_options = lambda source: None  # grain's default ReadOptions
  try:
    for workers in map(int, _WORKERS.value):
      config.num_workers = workers
      if case == "imagenet_eval":
        batches = input_pipeline.eval_batches(config, datasets.eval)  # one pass
      else:
        batches = iter(input_pipeline.create_train_loader(config, datasets.train, seed=0))
      first, rate, cpu_us = measure(batches, _SECONDS.value)
      rows.setdefault((case, workers), []).append((setup, first, rate, cpu_us))
      print(f"{case:34s} workers={workers}  set-up {setup:5.1f} s  first batch "
            f"{first:5.1f} s  {rate:7.0f} images/s  {cpu_us:6.0f} CPU us/image", flush=True)
      del batches
      wait_for_workers_to_exit()
  finally:
    input_pipeline._read_options = read_options


def main(argv):
  del argv
  for case in _CASES.value:
    if case not in CASES:
      raise app.UsageError(f"unknown case {case}; choose among {CASES}")
  rows = {}
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    for round_index in range(_ROUNDS.value):  # the cases alternate within every round
      print(f"round {round_index + 1}, load average {os.getloadavg()[0]:.1f}", flush=True)
      for case in _CASES.value:
        measure_case(case, tmp, rows)
  print(f"\nload average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on "
        f"{os.cpu_count()} CPUs; medians of {_ROUNDS.value} rounds\n")
  print("| case | workers | set-up (s) | first batch (s) | images/s | images/s per round "
        "| CPU us/image |")
  print("|---|---|---|---|---|---|---|")
  for (case, workers), rounds in rows.items():
    # A NaN would sort arbitrarily inside a median: any round without a CPU time makes it NaN.
    setup, first, rate, cpu_us = (
        float("nan") if any(v != v for v in column) else statistics.median(column)
        for column in zip(*rounds))
    per_round = ", ".join(f"{r[2]:.0f}" for r in rounds)
    print(f"| {case} | {workers} | {setup:.1f} | {first:.1f} | {rate:.0f} | {per_round} "
          f"| {cpu_us:.0f} |")


if __name__ == "__main__":
  app.run(main)
