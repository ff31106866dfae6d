"""bench/torch_irnet_train.py, the PyTorch reference of IR-Net's one-stage 1W1A ResNet-20
(issue 27 item 3): its run folders as compare reads them, resume after SIGTERM and after a kill,
--stop_at, the drop_last figure and the schedules against the original's formulas. On a tiny
JPEG folder (10 classes of 8 train and 4 test images), one block a stage, on the CPU.

Needs torch (the `bench` extra); skipped without it.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e .[bench])")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "torch_irnet_train.py")
sys.path.insert(0, os.path.join(REPO, "bench"))

import torch_irnet_train as trainer  # noqa: E402
import torch_reference as ref  # noqa: E402
import window_archives  # noqa: E402

CLASSES, TRAIN_EACH, TEST_EACH = 10, 8, 4
BATCH, EVAL_BATCH = 16, 24  # 5 steps an epoch; 24 of the 40 test images in full eval batches
TIMING = ("train/images_per_second",)


@pytest.fixture(scope="module", autouse=True)
def _threads_restored():
  """--threads=1 (quicker on a loaded 2-core machine) sets the process's count: put it back."""
  count = torch.get_num_threads()
  yield
  torch.set_num_threads(count)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """DIR/{train,test}/<class>/NNNN.jpg: noise with a channel at a class level, give or take
  a shift per image (so that some images of a class pass for another's)."""
  root = tmp_path_factory.mktemp("cifar_jpeg")
  rng = np.random.default_rng(0)
  for split, each in (("train", TRAIN_EACH), ("test", TEST_EACH)):
    for c in range(CLASSES):
      folder = root / split / f"class{c}"
      folder.mkdir(parents=True)
      for i in range(each):
        image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        image[..., c % 3] = np.clip(25 * c + rng.integers(-40, 41), 0, 255)
        Image.fromarray(image).save(folder / f"{i:04d}.jpg", quality=90)
  return str(root)


def _args(data_dir, workdir, *extra, epochs=2, seed=0):
  return [f"--data_dir={data_dir}", f"--workdir={workdir}", f"--epochs={epochs}",
          f"--seed={seed}", "--device=cpu", f"--batch_size={BATCH}",
          f"--eval_batch_size={EVAL_BATCH}", "--blocks=1", "--threads=1",
          f"--cache_dir={os.path.join(os.path.dirname(str(workdir)), 'cache')}", *extra]


def _run(data_dir, workdir, *extra, **kw) -> int:
  return trainer.main(_args(data_dir, workdir, *extra, **kw))


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _stable(records):
  return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _checkpoint(workdir):
  return torch.load(os.path.join(workdir, trainer.CHECKPOINT), weights_only=True)


def _assert_same_state(a, b):
  ca, cb = _checkpoint(a), _checkpoint(b)
  assert ca["model"].keys() == cb["model"].keys()
  for name in ca["model"]:
    assert torch.equal(ca["model"][name], cb["model"][name]), name
  momentum = lambda c: [s["momentum_buffer"] for _, s in sorted(c["optimizer"]["state"].items())]
  assert all(torch.equal(x, y) for x, y in zip(momentum(ca), momentum(cb)))
  assert _stable(_records(a)) == _stable(_records(b))


def _sigterm_at_step(monkeypatch, call):
  """SIGTERM to this process during the train step's `call`-th call (from 1)."""
  real, calls = trainer._train_step, []

  def step(*args):
    calls.append(None)
    if len(calls) == call:
      os.kill(os.getpid(), signal.SIGTERM)
    return real(*args)
  monkeypatch.setattr(trainer, "_train_step", step)


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """Two epochs in one go (a --stop_at an hour away does not stop it)."""
  workdir = str(tmp_path_factory.mktemp("runs") / "irnet_torch_s0")
  assert _run(data_dir, workdir, f"--stop_at={time.time() + 3600}") == 0
  return workdir


@pytest.fixture(scope="module")
def one_epoch(data_dir, tmp_path_factory):
  """The same run stopped by SIGTERM during epoch 1's last step: saved at epoch 1's end."""
  workdir = str(tmp_path_factory.mktemp("runs") / "irnet_torch_s0")
  with pytest.MonkeyPatch.context() as m:
    _sigterm_at_step(m, 5)
    assert _run(data_dir, workdir) == trainer.EXIT_PREEMPTED
  return workdir


def _copy(src, dst):
  import shutil
  shutil.copytree(src, dst)
  return str(dst)


def test_run_folder_is_read_by_compare(data_dir, straight, one_epoch, tmp_path):
  from bmd_jax.tools import compare
  other = str(tmp_path / "irnet_torch_s1")
  assert _run(data_dir, other, seed=1) == 0
  runs = compare.read_runs([straight, other])
  result = compare.compare(runs)
  expected = {"final": [], "best": [], "final_drop_last": [], "best_drop_last": []}
  for workdir in (straight, other):
    evaluations = [r for r in _records(workdir) if "eval/accuracy" in r]
    assert [r["epoch"] for r in evaluations] == [1.0, 2.0]
    expected["final"].append(evaluations[-1]["eval/accuracy"])
    expected["best"].append(max(r["eval/accuracy"] for r in evaluations))
    expected["final_drop_last"].append(evaluations[-1]["eval/accuracy_drop_last"])
    expected["best_drop_last"].append(max(r["eval/accuracy_drop_last"] for r in evaluations))
  assert [r.variant for r in runs] == ["irnet_torch", "irnet_torch"]
  for figure, values in expected.items():
    summary = result["figures"][figure]["variants"]["irnet_torch"]
    assert summary.n == 2
    assert summary.mean == pytest.approx(100 * np.mean(values), abs=1e-9)
  assert result["drop_last_examples"] == [EVAL_BATCH]
  assert result["trained_on"] == {"cpu, float32": 2}
  config = json.load(open(os.path.join(straight, "config.json")))
  assert (config["framework"], config["stages"], config["num_train_steps"], config["seed"]) == \
      ("torch", "train", 10, 0)
  # a run stopped after epoch 1 of 2 is unfinished to compare: its length is on record
  with pytest.raises(compare.RunFolderError, match="at step 5 of 10"):
    compare.read_run(one_epoch)


def test_resume_at_an_epoch_boundary_equals_the_straight_run(data_dir, straight, one_epoch,
                                                             tmp_path):
  assert [r["epoch"] for r in _records(one_epoch)] == [1.0, 1.0]
  assert _checkpoint(one_epoch)["epochs_done"] == 1
  resumed = _copy(one_epoch, tmp_path / "irnet_torch_s0")
  assert _run(data_dir, resumed) == 0
  _assert_same_state(straight, resumed)


def test_resume_mid_epoch_and_after_a_kill_between_records_and_checkpoint(
    data_dir, straight, tmp_path, monkeypatch):
  workdir = str(tmp_path / "irnet_torch_s0")
  _sigterm_at_step(monkeypatch, 7)  # epoch 2's second step: saved after it, mid-epoch
  assert _run(data_dir, workdir) == trainer.EXIT_PREEMPTED
  assert (_checkpoint(workdir)["epochs_done"], _checkpoint(workdir)["batch"]) == (1, 2)
  # What a GPU window's manifest reads, without torch: the step of the checkpoint on disk.
  assert window_archives.finished_steps(workdir) == {"train": 7}
  monkeypatch.undo()

  class Killed(Exception):
    pass

  def killed(*args):
    raise Killed  # as a SIGKILL after epoch 2's records were written, before its checkpoint
  monkeypatch.setattr(trainer, "save_checkpoint", killed)
  with pytest.raises(Killed):
    _run(data_dir, workdir)
  assert [r["epoch"] for r in _records(workdir)] == [1.0, 1.0, 2.0, 2.0]
  monkeypatch.undo()
  assert _run(data_dir, workdir) == 0  # resumes mid-epoch 2 again; the orphan records go
  _assert_same_state(straight, workdir)


def test_stop_at_in_the_past_stops_before_training(data_dir, one_epoch, tmp_path, capsys):
  workdir = _copy(one_epoch, tmp_path / "irnet_torch_s0")
  before = (open(os.path.join(workdir, trainer.CHECKPOINT), "rb").read(), _records(workdir))
  done = subprocess.run([sys.executable, SCRIPT, *_args(data_dir, workdir,
                                                        f"--stop_at={time.time() - 60}")],
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  assert "stopped at the end of epoch 1 of 2 (step 5)" in done.stdout
  assert open(os.path.join(workdir, trainer.CHECKPOINT), "rb").read() == before[0]
  assert _records(workdir) == before[1]
  fresh = str(tmp_path / "fresh")
  assert _run(data_dir, fresh, f"--stop_at={time.time() - 60}") == 0
  assert "stopped before the first epoch of 2 (step 0)" in capsys.readouterr().out
  assert not os.path.exists(os.path.join(fresh, trainer.CHECKPOINT))
  assert not os.path.exists(os.path.join(fresh, "metrics.jsonl"))


def _test_split(data_dir):
  """The test images in folder order, decoded and normalized here with bmd_jax's constants."""
  from bmd_jax.configs import cifar10
  config = cifar10.get_config()
  images, labels = [], []
  root = os.path.join(data_dir, "test")
  for label, name in enumerate(sorted(os.listdir(root))):
    for file in sorted(os.listdir(os.path.join(root, name))):
      with Image.open(os.path.join(root, name, file)) as image:
        images.append(np.asarray(image.convert("RGB"), np.float32))
      labels.append(label)
  x = (np.stack(images) / 255 - np.asarray(config.mean)) / np.asarray(config.std)
  return x.transpose(0, 3, 1, 2).astype(np.float32), np.asarray(labels)


def test_drop_last_figure_is_over_the_first_full_batches(data_dir, one_epoch):
  x, y = _test_split(data_dir)
  model = trainer.build_model(1)
  model.load_state_dict(_checkpoint(one_epoch)["model"])
  model.eval()
  with torch.no_grad():
    logits = model(torch.from_numpy(x)).numpy()
  correct = logits.argmax(1) == y
  kept = len(y) // EVAL_BATCH * EVAL_BATCH  # 24 of 40
  last = _records(one_epoch)[-1]
  assert len({correct[:kept].mean(), correct[-kept:].mean(), correct.mean()}) == 3, \
      "this fixture cannot tell the figures apart"
  assert last["eval/accuracy_drop_last"] == pytest.approx(correct[:kept].mean(), abs=1e-12)
  assert last["eval/accuracy"] == pytest.approx(correct.mean(), abs=1e-12)
  assert last["eval/examples_drop_last"] == kept
  nll = -(logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
          - logits.max(1, keepdims=True))[np.arange(len(y)), y]
  assert last["eval/loss"] == pytest.approx(nll.mean(), rel=1e-4)


def _original_schedules(epochs):
  """trainer.py's lr (CosineAnnealingLR stepped per epoch, read at each epoch's start) and
  EDE's Log_UP t and k, as the original computes them."""
  p = torch.nn.Parameter(torch.zeros(1))
  optimizer = torch.optim.SGD([p], 0.1, momentum=0.9, weight_decay=1e-4)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs, eta_min=0)
  out = []
  for epoch in range(epochs):
    kmin, kmax = math.log(1e-3) / math.log(10), math.log(1e1) / math.log(10)
    t = torch.tensor([math.pow(10, kmin + (kmax - kmin) / epochs * epoch)]).float()
    k = 1 / t if t < 1 else torch.tensor([1]).float()
    out.append((optimizer.param_groups[0]["lr"], t.item(), k.item()))
    optimizer.step()
    scheduler.step()
  return out


def test_schedules_are_the_originals(data_dir, tmp_path, monkeypatch):
  for epochs in (4, 200, 400):
    expected = _original_schedules(epochs)
    got = [(trainer.learning_rate(e, epochs), *trainer.ede_t_k(e, epochs)) for e in range(epochs)]
    assert np.allclose(got, expected, rtol=1e-6, atol=0)
  assert expected[-1][1] < 10 and expected[0][1] == pytest.approx(1e-3)
  # what the run applies: every binary conv's (t, k) and the optimizer's lr, at each step
  seen, real = [], trainer._train_step

  def step(model, optimizer, images, labels):
    convs = [m.est["ede"] for m in model.modules() if isinstance(m, ref.BinaryConv2d)]
    seen.append((optimizer.param_groups[0]["lr"], {c["t"] for c in convs},
                 {c["k"] for c in convs}, len(convs)))
    return real(model, optimizer, images, labels)
  monkeypatch.setattr(trainer, "_train_step", step)
  workdir = str(tmp_path / "run")
  assert _run(data_dir, workdir, "--max_steps_per_epoch=1", epochs=4) == 0
  expected = _original_schedules(4)
  assert len(seen) == 4
  for (lr, ts, ks, convs), (e_lr, e_t, e_k) in zip(seen, expected):
    assert convs == 6 and len(ts) == len(ks) == 1
    assert (lr, ts.pop(), ks.pop()) == pytest.approx((e_lr, e_t, e_k), rel=1e-6)
  recorded = [r for r in _records(workdir) if "train/learning_rate" in r]
  assert [(r["train/learning_rate"], r["train/ede_t"], r["train/ede_k"]) for r in recorded] == \
      pytest.approx(expected, rel=1e-6)


def test_data_normalization_and_cache(data_dir, straight):
  from bmd_jax.configs import cifar10
  config = cifar10.get_config()
  assert trainer.MEAN == tuple(config.mean) and trainer.STD == tuple(config.std)
  cache = os.path.join(os.path.dirname(straight), "cache")
  [train_cache] = [f for f in os.listdir(cache) if f.startswith("cifar10_train_")]
  cached = np.load(os.path.join(cache, train_cache))
  root = os.path.join(data_dir, "train")
  files = [os.path.join(root, c, f) for c in sorted(os.listdir(root))
           for f in sorted(os.listdir(os.path.join(root, c)))]
  assert cached.shape == (CLASSES * TRAIN_EACH, 32, 32, 3)
  assert all(np.array_equal(cached[i], np.asarray(Image.open(f).convert("RGB")))
             for i, f in enumerate(files))


def test_model_is_resnet20_with_the_originals_init():
  model = trainer.build_model()
  assert sum(p.numel() for p in model.parameters()) == 269_850  # bmd_jax's resnet20
  layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
  assert sum(isinstance(m, ref.BinaryConv2d) for m in layers) == 18 and len(layers) == 20
  for m in layers:  # resnet.py's _weights_init: kaiming_normal_, std sqrt(2 / fan_in)
    fan_in = m.weight[0].numel()
    assert m.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.15)
    assert abs(m.weight.mean().item()) < 0.2 * math.sqrt(2 / fan_in)


def test_each_epoch_and_seed_draw_their_own_batches():
  order, offsets, flips = trainer.epoch_draws(3, 5, 1000)
  assert all(torch.equal(a, b) for a, b in zip((order, offsets, flips),
                                               trainer.epoch_draws(3, 5, 1000)))
  for other in (trainer.epoch_draws(3, 6, 1000), trainer.epoch_draws(4, 5, 1000)):
    assert not torch.equal(order, other[0]) and not torch.equal(offsets, other[1])
  assert torch.equal(order.sort().values, torch.arange(1000))
  assert set(offsets.flatten().tolist()) == set(range(9))
  assert 400 < int(flips.sum()) < 600


def test_crop_and_flip_against_numpy():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  top, left = rng.integers(0, 9, (2, 6))
  flip = np.array([True, False] * 3)
  got = trainer.crop_and_flip(torch.from_numpy(images), torch.from_numpy(top),
                              torch.from_numpy(left), torch.from_numpy(flip)).numpy()
  for i in range(6):
    padded = np.pad(images[i], ((4, 4), (4, 4), (0, 0)))
    crop = padded[top[i]:top[i] + 32, left[i]:left[i] + 32]
    assert np.array_equal(got[i], crop[:, ::-1] if flip[i] else crop)


def test_bad_input_is_one_line(data_dir, one_epoch, tmp_path, capsys):
  assert trainer.main(_args(str(tmp_path / "nowhere"), tmp_path / "w")) == trainer.EXIT_BAD_INPUT
  assert "is not a folder: --data_dir must hold train/<class>" in capsys.readouterr().err
  workdir = _copy(one_epoch, tmp_path / "irnet_torch_s0")
  assert _run(data_dir, workdir, epochs=3) == trainer.EXIT_BAD_INPUT
  err = capsys.readouterr().err
  assert "epochs=2 (now 3)" in err and len(err.strip().splitlines()) == 1


def test_evaluation_runs_without_tf32_and_restores_the_training_setting(monkeypatch):
  """Training may use TF32 (as bmd_jax at JAX's default precision on a GPU); evaluation is
  float32, as bmd_jax's at 'highest', and training continues with its own setting."""
  seen = []
  monkeypatch.setattr(trainer, "_evaluate", lambda *a: seen.append(
      (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)) or {})
  was = trainer._allow_tf32(True)
  try:
    trainer.evaluate(None, None, None, 1)
    assert seen == [(False, False)]
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
  finally:
    trainer._allow_tf32(was)
