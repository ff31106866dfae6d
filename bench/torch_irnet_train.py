"""A PyTorch reference trainer of IR-Net's one-stage 1W1A ResNet-20 on CIFAR-10 (issue 27 item
3): the `irnet_torch` runs of docs/EXPERIMENT.md's calibration, written into run folders that
``python -m bmd_jax.tools.compare`` reads like bmd_jax's own.

    python bench/torch_irnet_train.py --data_dir=../shared/data/cifar10-jpeg \\
        --workdir=runs/C/irnet_torch_s0 --epochs=200 --seed=0 --device=cuda
    python -m bmd_jax.tools.compare runs/C/irnet_s* runs/C/irnet_torch_s* --baseline=irnet_torch

The recipe, checked against htqin/IR-Net at commit 831282f: CIFAR-10/ResNet20/1w1a/trainer.py
(the trainer), resnet.py (resnet20_1w1a) and modules/ir_1w1a.py (IRConv2d):

- model: bench/torch_reference.CifarResNet (bmd_jax's resnet20 twin, IR-Net's layout: real stem
  conv, BN, hardtanh; 3 stages of 3 blocks of [binary conv, BN, + shortcut, hardtanh] x 2 with
  option-A shortcuts; average pool, BatchNorm1d, linear) with precision 'binary', EDE for
  weights and activations and scale_mode 'irnet' (per output channel: centre, divide by the
  N-1 std, sign, times 2^round(log2 mean|W_hat|), detached): IRConv2d. Init: kaiming_normal_
  on every Conv2d and Linear weight (resnet.py's _weights_init; torch_reference keeps
  PyTorch's default, so it is applied here).
- EDE (trainer.py's Log_UP): at the start of epoch e (from 0), t = 10^(log10 T_min +
  (log10 T_max - log10 T_min) / epochs * e), T_min = 1e-3, T_max = 10, so the last epoch's t
  is just under 10; k = 1/t while t < 1, else 1. Both float32, as the original's tensors.
- optimizer: SGD over every parameter, lr 0.1, momentum 0.9, weight decay 1e-4
  (torch.optim.SGD(model.parameters(), ...)); the lr is CosineAnnealingLR(T_max=epochs,
  eta_min=0) stepped once an epoch: 0.1 * (1 + cos(pi * e / epochs)) / 2 through epoch e
  (bmd_jax's cosine decays at every step: the same curve, sampled finer).
- data: batch 128, a new shuffle each epoch, the last partial batch dropped (drop_last=True:
  390 steps of 50,000 images); RandomHorizontalFlip and RandomCrop(32, 4) (crop offsets
  uniform over 0..8 of the image zero-padded by 4 pixels); cross-entropy. The original's
  default length is 400 epochs (--epochs; the calibration runs 200).
- evaluation after every epoch, BN in eval mode. The original's test loader has drop_last too:
  at batch 128 it sees 9,984 of the 10,000 images (eval/accuracy_drop_last, over the first
  floor(n / eval_batch_size) * eval_batch_size test images in folder order, so the 16 left
  out are the last truck images, as in bmd_jax, not the original's last 16); eval/accuracy is
  over all of them.

Where this trainer departs from the original, and why:
- the project's JPEG folder (docs/EXPERIMENT.md), decoded once with Pillow, classes in sorted
  order, files in name order (as bmd_jax.data.image_folder), in place of torchvision's
  download; normalized with bmd_jax's CIFAR-10 mean and std (bmd_jax/configs/cifar10.py), not
  the original's ImageNet ones (0.485, 0.456, 0.406 / 0.229, 0.224, 0.225): both frameworks
  see the same input, which is what the calibration compares.
- torch_reference's binarizer: sign(0) = +1 (torch.sign gives 0) and std + 1e-8.
- on a GPU, training convolutions and matmuls in TF32 (the original's GPUs had none), as
  bmd_jax trains at JAX's default precision, which is TF32 on these cards: the calibration
  compares the two frameworks trained alike; --train_tf32=0 trains in float32. Evaluation is
  float32 with TF32 off, as bmd_jax's at 'highest'.
- shuffle and augmentation draws come from a generator seeded by (seed, epoch) on the CPU, so
  a resumed run, and a CUDA run and a CPU run of one seed, see the same batches; the crop and
  flip are done on the device.
- eval/best_accuracy is the best eval/accuracy (all images), as bmd_jax's; the original's
  best_prec1 is the best over its 9,984, which compare gives as best_drop_last.
- a checkpoint every epoch (the original's save_checkpoint is `pass`), written atomically, and
  resume from it: the run folder's checkpoint.pt. SIGTERM saves at the next batch boundary
  and exits 75 (bmd_jax's preempted status); --stop_at=UNIX_S stops at the last epoch
  boundary that the last epoch's duration says comes before it (or at a batch boundary once
  the time has come), saves and exits 0. Resuming cuts metrics.jsonl back to the records at
  or before the checkpoint's epoch, so no record is written twice.

The run folder: config.json (stages 'train', num_epochs, num_train_steps, model.dtype, seed,
"framework": "torch" and the recipe's values), run_info.json (device_kind: the CUDA device's
name or 'cpu', as JAX names them), metrics.jsonl (per epoch a train record and an evaluation
record, in bmd_jax's keys) and checkpoint.pt. Deterministic on the CPU for a seed at a fixed
--threads (the thread count changes how float sums are split). Dry runs:
--examples=K keeps K images of each split, --max_steps_per_epoch=K shortens the epochs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time

import numpy as np
import PIL
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_reference as ref  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)  # bmd_jax/configs/cifar10.py
STD = (0.2023, 0.1994, 0.2010)
T_MIN, T_MAX = 1e-3, 10.0  # trainer.py
LEARNING_RATE, MOMENTUM, WEIGHT_DECAY = 0.1, 0.9, 1e-4
PADDING, IMAGE_SIZE = 4, 32
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_RECORD = "checkpoint.json"  # its step, read by bench/window_archives.py
EXIT_BAD_INPUT, EXIT_PREEMPTED = 2, 75  # 75: bmd_jax.infra.cli.EXIT_PREEMPTED
SOURCE = "htqin/IR-Net@831282f CIFAR-10/ResNet20/1w1a/trainer.py"


class InputError(ValueError):
  """Bad flags or data: the message names the problem and the fix, printed in one line."""


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--data_dir", required=True, help="DIR/train/<class>/*.jpg, DIR/test/...")
  p.add_argument("--workdir", required=True, help="the run folder (resumed when it has a "
                 "checkpoint)")
  p.add_argument("--epochs", type=int, default=400)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  p.add_argument("--stop_at", type=float, default=0.0, help="unix time to stop before")
  p.add_argument("--batch_size", type=int, default=128)
  p.add_argument("--eval_batch_size", type=int, default=128)
  p.add_argument("--max_steps_per_epoch", type=int, default=0, help="dry runs: shorter epochs")
  p.add_argument("--examples", type=int, default=0, help="dry runs: K images of each split")
  p.add_argument("--blocks", type=int, default=3, help="blocks a stage (3: ResNet-20; tests: 1)")
  p.add_argument("--train_tf32", type=int, default=1, help="on a GPU, train in TF32 as bmd_jax "
                 "does at JAX's default precision (0: float32)")
  p.add_argument("--threads", type=int, default=0, help="CPU threads (0: PyTorch's default); "
                 "CPU results are reproducible at a fixed count")
  p.add_argument("--cache_dir", default="", help="decoded-image cache (default: a folder "
                 "beside the workdir)")
  args = p.parse_args(argv)
  for name in ("epochs", "batch_size", "eval_batch_size", "blocks"):
    if getattr(args, name) < 1:
      raise InputError(f"--{name}={getattr(args, name)}: it must be at least 1")
  for name in ("max_steps_per_epoch", "examples", "threads"):
    if getattr(args, name) < 0:
      raise InputError(f"--{name}={getattr(args, name)}: it must be 0 (off) or positive")
  return args


# --- schedules (the original's, per epoch) -------------------------------------------

def learning_rate(epoch: int, epochs: int) -> float:
  """CosineAnnealingLR(T_max=epochs, eta_min=0)'s lr through epoch `epoch` (from 0)."""
  return LEARNING_RATE * (1 + math.cos(math.pi * epoch / epochs)) / 2


def ede_t_k(epoch: int, epochs: int) -> tuple[float, float]:
  """EDE's (t, k) through epoch `epoch` (from 0), rounded to float32 as the original's."""
  t = np.float32(T_MIN * (T_MAX / T_MIN) ** (epoch / epochs))
  k = np.float32(1) / t if t < 1 else np.float32(1)
  return float(t), float(k)


# --- data ------------------------------------------------------------------------------

def list_split(data_dir: str, split: str):
  """(classes, files, labels) of DIR/split/<class>/<image>, classes and files sorted."""
  root = os.path.join(data_dir, split)
  if not os.path.isdir(root):
    raise InputError(f"{root} is not a folder: --data_dir must hold train/<class>/*.jpg and "
                     "test/<class>/*.jpg (the CIFAR-10 image folder)")
  classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
  if not classes:
    raise InputError(f"{root} has no class folders: it must hold <class>/*.jpg")
  files, labels = [], []
  for label, name in enumerate(classes):
    names = sorted(n for n in os.listdir(os.path.join(root, name))
                   if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
      raise InputError(f"{os.path.join(root, name)} holds no images; remove the folder or "
                       "fill it")
    files += [os.path.join(root, name, n) for n in names]
    labels += [label] * len(names)
  return classes, files, np.asarray(labels, np.int64)


def decode(path: str) -> np.ndarray:
  with Image.open(path) as image:
    array = np.asarray(image.convert("RGB"))
  if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
    raise InputError(f"{path} is {array.shape[1]}x{array.shape[0]}: this trainer reads "
                     f"CIFAR-10's {IMAGE_SIZE}x{IMAGE_SIZE} images only")
  return array


def decode_all(files) -> np.ndarray:
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # Pillow frees the GIL
    return np.stack(list(pool.map(decode, files)))


def _atomic_write(path: str, write) -> None:
  """write(file) into path's temporary sibling, fsync, rename over path, fsync the folder: a
  kill leaves the old file or the new one, never a torn one."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
  try:
    os.fsync(folder)
  finally:
    os.close(folder)


def load_split(data_dir, split, examples, cache_dir):
  """(images uint8 NHWC, labels, classes); the whole split cached as .npy under cache_dir,
  keyed by its files' names and sizes; --examples' subsets are decoded, not cached."""
  classes, files, labels = list_split(data_dir, split)
  if examples:
    keep = np.sort(np.random.default_rng(0).permutation(len(files))[:examples])
    return decode_all([files[i] for i in keep]), labels[keep], classes
  listing = "\n".join(f"{os.path.relpath(f, data_dir)} {os.path.getsize(f)}" for f in files)
  key = hashlib.sha1(listing.encode()).hexdigest()[:16]
  path = os.path.join(cache_dir, f"cifar10_{split}_{key}.npy")
  if os.path.exists(path):
    images = np.load(path)
    if images.shape == (len(files), IMAGE_SIZE, IMAGE_SIZE, 3) and images.dtype == np.uint8:
      return images, labels, classes
  images = decode_all(files)
  os.makedirs(cache_dir, exist_ok=True)
  _atomic_write(path, lambda f: np.save(f, images))
  return images, labels, classes


def normalize(images: torch.Tensor) -> torch.Tensor:
  """uint8 NHWC -> float32 NCHW, (x / 255 - mean) / std as bmd_jax's on_device.normalize."""
  x = images.permute(0, 3, 1, 2).float() * (1 / 255)
  mean, inverse_std = _channel_stats(x.device)
  return (x - mean) * inverse_std


@functools.lru_cache(maxsize=None)
def _channel_stats(device):
  return (torch.tensor(MEAN, device=device).view(1, 3, 1, 1),
          1 / torch.tensor(STD, device=device).view(1, 3, 1, 1))


def epoch_draws(seed: int, epoch: int, count: int):
  """The epoch's order, crop offsets (2, count) and flips, from a CPU generator seeded by
  (seed, epoch): the same on every device and after a resume."""
  state = np.random.SeedSequence([seed, epoch]).generate_state(1)[0]
  g = torch.Generator().manual_seed(int(state))
  order = torch.randperm(count, generator=g)
  offsets = torch.randint(0, 2 * PADDING + 1, (2, count), generator=g)
  flips = torch.rand(count, generator=g) < 0.5
  return order, offsets, flips


def crop_and_flip(images, top, left, flip):
  """uint8 NHWC images zero-padded by PADDING, cropped at (top, left) to their size, flipped
  where `flip`: one gather on the images' device."""
  n, size = images.shape[0], images.shape[1]
  padded = F.pad(images, (0, 0, PADDING, PADDING, PADDING, PADDING))
  steps = torch.arange(size, device=images.device)
  rows = top[:, None] + steps
  cols = left[:, None] + torch.where(flip[:, None], steps.flip(0), steps)
  return padded[torch.arange(n, device=images.device)[:, None, None], rows[:, :, None],
                cols[:, None, :]]


# --- model, steps, evaluation ------------------------------------------------------------

def build_model(blocks: int = 3) -> nn.Module:
  """IR-Net's resnet20_1w1a as torch_reference builds it, with resnet.py's init."""
  model = ref.CifarResNet(stage_sizes=(blocks,) * 3, precision="binary", input_quantizer="ede",
                          kernel_quantizer="ede", scale_mode="irnet")
  for m in model.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      nn.init.kaiming_normal_(m.weight)
  return model


def set_schedule(model, optimizer, epoch: int, epochs: int) -> tuple[float, float, float]:
  lr = learning_rate(epoch, epochs)
  for group in optimizer.param_groups:
    group["lr"] = lr
  t, k = ede_t_k(epoch, epochs)
  ref.set_estimator_args(model, {"ede": {"t": t, "k": k}, "ste": {"clip_value": 1.0}})
  return lr, t, k


def _train_step(model, optimizer, images, labels):
  """One SGD step on cross-entropy; (loss, correct count) as device tensors (no sync)."""
  model.train()
  optimizer.zero_grad(set_to_none=True)
  logits = model(images)
  loss = F.cross_entropy(logits, labels)
  loss.backward()
  optimizer.step()
  return loss.detach(), (logits.argmax(1) == labels).sum()


@torch.no_grad()
def _allow_tf32(allowed: bool) -> bool:
  """Sets TF32 for CUDA convolutions and matmuls; returns what it was."""
  was = torch.backends.cudnn.allow_tf32
  torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allowed
  return was


def evaluate(model, images, labels, batch_size: int) -> dict:
  """bmd_jax's evaluation keys over the split (`images` normalized, in folder order), in
  float32 (TF32 off, as bmd_jax's 'highest')."""
  was = _allow_tf32(False)
  try:
    return _evaluate(model, images, labels, batch_size)
  finally:
    _allow_tf32(was)


def _evaluate(model, images, labels, batch_size: int) -> dict:
  model.eval()
  nll, correct = 0.0, []
  for start in range(0, len(labels), batch_size):
    logits = model(images[start:start + batch_size])
    nll += F.cross_entropy(logits, labels[start:start + batch_size], reduction="sum").item()
    correct.append(logits.argmax(1) == labels[start:start + batch_size])
  correct = torch.cat(correct).cpu().numpy()
  n = len(correct)
  metrics = {"eval/loss": nll / n, "eval/accuracy": float(correct.mean())}
  kept = n // batch_size * batch_size
  if kept:  # none when the split is shorter than a batch, as bmd_jax's evaluation
    metrics["eval/accuracy_drop_last"] = float(correct[:kept].mean())
    metrics["eval/examples_drop_last"] = kept
  return metrics


# --- the run folder ----------------------------------------------------------------------

def _git_state():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  def git(*a):
    try:
      done = subprocess.run(["git", "-C", repo, *a], capture_output=True, text=True,
                            timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
      return None
    return done.stdout.strip() if done.returncode == 0 else None
  commit = git("rev-parse", "HEAD")
  status = git("status", "--porcelain", "--untracked-files=no")
  return {"commit": commit, "dirty": None if status is None else bool(status)} if commit else None


def device_kind(device: torch.device) -> str:
  """As JAX's device_kind: the CUDA device's name, or 'cpu'."""
  return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def write_run_record(workdir, args, recipe, device, argv) -> None:
  config = {
      "framework": "torch", "source": SOURCE, "stages": "train",  # a string, as bmd_jax's
      "num_epochs": float(args.epochs), "num_train_steps": args.epochs * recipe["steps_per_epoch"],
      **recipe, "data_dir": os.path.abspath(args.data_dir), "dataset": "image_folder",
      "optimizer": "sgd", "learning_rate": LEARNING_RATE, "momentum": MOMENTUM,
      "weight_decay": WEIGHT_DECAY, "weight_decay_kernels_only": False,
      "lr_schedule": "cosine", "lr_schedule_per": "epoch", "augment": "cifar",
      "mean": list(MEAN), "std": list(STD),
      "tf32": bool(args.train_tf32) and device.type == "cuda",
      "model": {"name": "resnet20" if args.blocks == 3 else f"resnet_cifar_{args.blocks}x3",
                "stage_sizes": [args.blocks] * 3, "dtype": "float32", "precision": "binary",
                "input_quantizer": "ede", "kernel_quantizer": "ede", "scale_mode": "irnet",
                "init": "kaiming_normal"},
      "estimators": {"ede_t_min": T_MIN, "ede_t_max": T_MAX, "schedule_per": "epoch"},
      "loss": {"ce": {"weight": 1.0}},
  }
  info = {
      "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "argv": [sys.argv[0], *argv], "framework": "torch",
      "versions": {"python": platform.python_version(), "torch": torch.__version__,
                   "numpy": np.__version__, "Pillow": PIL.__version__},
      "git": _git_state(), "backend": device.type, "devices": 1,
      "device_kind": device_kind(device), "threads": torch.get_num_threads(),
  }
  for name, value in (("config.json", config), ("run_info.json", info)):
    text = json.dumps(value, indent=2, sort_keys=True) + "\n"
    _atomic_write(os.path.join(workdir, name), lambda f, t=text: f.write(t.encode()))


def cut_metrics(path: str, epochs_done: int) -> None:
  """metrics.jsonl without the records after the checkpoint's epoch (and torn lines)."""
  if not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    text = f.read()
  kept = []
  for line in text.splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and record.get("epoch", 0) <= epochs_done:
      kept.append(line + "\n")
  if "".join(kept) != text:
    _atomic_write(path, lambda f: f.write("".join(kept).encode()))


def append_records(path: str, records) -> None:
  with open(path, "a", encoding="utf-8") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))
    f.flush()
    os.fsync(f.fileno())


def save_checkpoint(workdir, model, optimizer, recipe, progress, step: int) -> None:
  """checkpoint.pt, then checkpoint.json with its step (each atomically): what a GPU window
  returns and checks without loading torch (bench/window_archives.py)."""
  state = {"recipe": recipe, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
           **progress}
  _atomic_write(os.path.join(workdir, CHECKPOINT), lambda f: torch.save(state, f))
  record = json.dumps({"step": step, "epochs_done": progress["epochs_done"],
                       "batch": progress["batch"]}).encode()
  _atomic_write(os.path.join(workdir, CHECKPOINT_RECORD), lambda f: f.write(record))


def load_checkpoint(workdir, model, optimizer, recipe, device):
  """The saved progress ({epochs_done, batch, sums, best}), or None without a checkpoint; the
  model and optimizer take its state. A checkpoint of another recipe is refused."""
  path = os.path.join(workdir, CHECKPOINT)
  if not os.path.exists(path):
    return None
  state = torch.load(path, map_location=device, weights_only=True)
  differ = {k: (state["recipe"].get(k), v) for k, v in recipe.items()
            if state["recipe"].get(k) != v}
  if differ:
    what = ", ".join(f"{k}={old} (now {new})" for k, (old, new) in sorted(differ.items()))
    raise InputError(f"{workdir} holds a run with {what}: rerun it with its own flags, or "
                     "give a new --workdir")
  model.load_state_dict(state["model"])
  optimizer.load_state_dict(state["optimizer"])
  return {k: state[k] for k in ("epochs_done", "batch", "sums", "best")}


class Stopper:
  """SIGTERM (noted, acted on at the next batch boundary) and --stop_at."""

  def __init__(self, stop_at: float):
    self.stop_at, self.sigterm, self.previous = stop_at, False, None

  def __enter__(self):
    try:
      self.previous = signal.signal(signal.SIGTERM, self._received)
    except ValueError:  # not the main thread: no handler, --stop_at still works
      self.previous = None
    return self

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)

  def _received(self, signum, frame):
    self.sigterm = True

  def time_is_up(self, margin: float = 0.0) -> bool:
    return bool(self.stop_at) and time.time() + margin >= self.stop_at


# --- the loop ----------------------------------------------------------------------------

def load_data(args, workdir):
  """((train images, labels), (test images, labels), classes): uint8 NHWC and int64."""
  cache_dir = args.cache_dir or os.path.join(os.path.dirname(workdir), "torch_irnet_cache")
  train_x, train_y, classes = load_split(args.data_dir, "train", args.examples, cache_dir)
  test_x, test_y, test_classes = load_split(args.data_dir, "test", args.examples, cache_dir)
  if classes != test_classes:
    raise InputError(f"{args.data_dir}: train/ and test/ have different class folders "
                     f"({classes} and {test_classes}); give both the same classes")
  return (train_x, train_y), (test_x, test_y), classes


def train(args, argv) -> int:
  if args.device.startswith("cuda") and not torch.cuda.is_available():
    raise InputError(f"--device={args.device} but PyTorch sees no CUDA device; pass "
                     "--device=cpu")
  device = torch.device(args.device)
  if args.threads:
    torch.set_num_threads(args.threads)
  workdir = os.path.abspath(args.workdir)
  os.makedirs(workdir, exist_ok=True)
  (train_x, train_y), (test_x, test_y), classes = load_data(args, workdir)
  steps_per_epoch = len(train_y) // args.batch_size
  if args.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
  if steps_per_epoch == 0:
    raise InputError(f"{len(train_y)} training images make no full batch of "
                     f"--batch_size={args.batch_size}; lower it")
  recipe = {"epochs": args.epochs, "seed": args.seed, "batch_size": args.batch_size,
            "train_tf32": args.train_tf32,
            "eval_batch_size": args.eval_batch_size, "steps_per_epoch": steps_per_epoch,
            "blocks": args.blocks, "examples": args.examples, "num_train": len(train_y),
            "num_eval": len(test_y), "classes": classes}

  if device.type == "cuda":
    torch.backends.cudnn.benchmark = True  # as the original
    _allow_tf32(bool(args.train_tf32))
  torch.manual_seed(args.seed)
  model = build_model(args.blocks).to(device)
  optimizer = ref.make_optimizer(model, "sgd", LEARNING_RATE, MOMENTUM, WEIGHT_DECAY,
                                 kernels_only=False)
  progress = load_checkpoint(workdir, model, optimizer, recipe, device) or {
      "epochs_done": 0, "batch": 0, "sums": [0.0, 0.0],
      "best": {"accuracy": -1.0, "epoch": 0.0}}
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  cut_metrics(metrics_path, progress["epochs_done"])
  if progress["epochs_done"] >= args.epochs:
    print(f"{workdir}: already finished ({args.epochs} epochs); nothing to do")
    return 0
  write_run_record(workdir, args, recipe, device, argv)

  train_x, train_y = torch.from_numpy(train_x).to(device), torch.from_numpy(train_y).to(device)
  test_x = normalize(torch.from_numpy(test_x).to(device))
  test_y = torch.from_numpy(test_y).to(device)
  b, epochs = args.batch_size, args.epochs
  saved = True  # the state on disk (or the fresh one) is the state in memory
  epoch_seconds = 0.0  # the last whole epoch's, for --stop_at

  def stop(why: str, code: int) -> int:
    e, i = progress["epochs_done"], progress["batch"]
    if not saved:
      save_checkpoint(workdir, model, optimizer, recipe, progress, e * steps_per_epoch + i)
    where = (f"after batch {i} of epoch {e + 1}" if i else f"at the end of epoch {e}" if e
             else "before the first epoch")
    path = os.path.join(workdir, CHECKPOINT)
    kept = f"saved in {path}" if os.path.exists(path) else "nothing trained, nothing saved"
    print(f"stopped {where} of {epochs} (step {e * steps_per_epoch + i}): {why}; {kept}; run "
          "the same command to resume")
    return code

  with Stopper(args.stop_at) as stopper:
    while progress["epochs_done"] < epochs:
      epoch = progress["epochs_done"]
      if progress["batch"] == 0 and stopper.sigterm:
        return stop("SIGTERM received", EXIT_PREEMPTED)
      if progress["batch"] == 0 and stopper.time_is_up(epoch_seconds):
        return stop(f"--stop_at is {args.stop_at - time.time():.0f} s away and an epoch "
                    f"takes {epoch_seconds:.0f} s", 0)
      started = time.time()
      lr, t, k = set_schedule(model, optimizer, epoch, epochs)
      order, offsets, flips = (x.to(device) for x in epoch_draws(args.seed, epoch, len(train_y)))
      sums = torch.tensor(progress["sums"], dtype=torch.float64, device=device)
      first = progress["batch"]
      for i in range(first, steps_per_epoch):
        if i > 0 and (stopper.sigterm or stopper.time_is_up()):
          progress["sums"] = sums.tolist()
          return stop("SIGTERM received" if stopper.sigterm else "--stop_at reached",
                      EXIT_PREEMPTED if stopper.sigterm else 0)
        rows = slice(i * b, (i + 1) * b)
        index = order[rows]
        images = crop_and_flip(train_x[index], offsets[0, rows], offsets[1, rows], flips[rows])
        loss, correct = _train_step(model, optimizer, normalize(images), train_y[index])
        sums += torch.stack([loss.double() * b, correct.double()])
        progress["batch"], saved = i + 1, False
      done, trained_seconds = epoch + 1, time.time() - started
      evaluation = evaluate(model, test_x, test_y, args.eval_batch_size)
      best = progress["best"]
      if evaluation["eval/accuracy"] > best["accuracy"]:
        best = {"accuracy": evaluation["eval/accuracy"], "epoch": float(done)}
      (loss_sum, correct_sum), count = sums.tolist(), steps_per_epoch * b
      head = {"step": done * steps_per_epoch, "epoch": float(done), "stage": "train"}
      append_records(metrics_path, [
          {**head, "train/loss": loss_sum / count, "train/accuracy": correct_sum / count,
           "train/learning_rate": lr, "train/ede_t": t, "train/ede_k": k,
           "train/images_per_second": (steps_per_epoch - first) * b / max(trained_seconds, 1e-9)},
          {**head, **evaluation, "eval/best_accuracy": best["accuracy"],
           "eval/best_epoch": best["epoch"]}])
      progress = {"epochs_done": done, "batch": 0, "sums": [0.0, 0.0], "best": best}
      save_checkpoint(workdir, model, optimizer, recipe, progress, done * steps_per_epoch)
      saved = True
      print(f"epoch {done}/{epochs}: train loss {loss_sum / count:.4f}, top-1 "
            f"{evaluation['eval/accuracy']:.4f} (best {best['accuracy']:.4f} at epoch "
            f"{best['epoch']:.0f}), {time.time() - started:.1f} s", flush=True)
      if first == 0:
        epoch_seconds = time.time() - started
  print(f"finished: {epochs} epochs, top-1 {evaluation['eval/accuracy']:.4f}, best "
        f"{best['accuracy']:.4f} at epoch {best['epoch']:.0f}; run folder {workdir}")
  return 0


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    return train(parse_args(argv), argv)
  except InputError as e:
    print(f"torch_irnet_train: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
  sys.exit(main())
