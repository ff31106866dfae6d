"""bmd_jax.tools.convert: state dicts of PyTorch networks built to the originals' definitions
(torch_originals.py, narrow widths), with random weights and batch-norm statistics, convert into
checkpoints that load as ``init_from``/``teacher``/``distill_teacher`` load them and give the
originals' logits (eval mode, to 1e-5; measured about 3e-7).

Inputs to sign are sums of random floats, so torch.sign's 0 at 0 (bmd_jax: +1) never meets a
zero; each comparison checks that it did not.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

import torch_originals as originals
from bmd_jax.infra import checkpoint
from bmd_jax.tools import convert
from bmd_jax import models
from narrow_models import FAST_COMPILE, NARROW_REACTNET, NARROW_RESNET

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REACTNET_A_CHANNELS = (NARROW_REACTNET["stem_width"], *NARROW_REACTNET["block_widths"])

# case -> (--from, the original's network, bmd_jax precision)
CASES = {
    "reactnet_resnet18": ("reactnet_resnet18",
                          lambda: originals.BiRealNet(widths=NARROW_RESNET, num_classes=10),
                          "binary"),
    "reactnet_resnet18_step1": ("reactnet_resnet18", lambda: originals.BiRealNet(
        widths=NARROW_RESNET, num_classes=10, step=1), "binary_activations"),
    "reactnet_a": ("reactnet_a", lambda: originals.ReActNetA(REACTNET_A_CHANNELS, 10), "binary"),
    "reactnet_a_step1": ("reactnet_a", lambda: originals.ReActNetA(REACTNET_A_CHANNELS, 10, 1),
                         "binary_activations"),
    "irnet_resnet20": ("irnet_resnet20", lambda: originals.IRNetResNet(), "binary"),
    "torchvision_resnet34": ("torchvision_resnet34", lambda: originals.TorchvisionResNet(
        widths=NARROW_RESNET, num_classes=10), "full"),
}


def randomized(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
  """`net` with random weights, shifts, slopes and batch-norm statistics, in eval mode."""
  g = torch.Generator().manual_seed(seed)

  def normal(t, std):
    t.copy_(torch.randn(t.shape, generator=g) * std)

  def uniform(t, low, high):
    t.copy_(low + (high - low) * torch.rand(t.shape, generator=g))

  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        uniform(m.weight, 0.5, 1.5)
        normal(m.bias, 0.2)
        normal(m.running_mean, 0.2)
        uniform(m.running_var, 0.5, 1.5)
      elif isinstance(m, torch.nn.PReLU):
        uniform(m.weight, 0.0, 0.5)
      elif isinstance(m, originals.LearnableBias):
        normal(m.bias, 0.2)
      elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, originals.HardBinaryConv)):
        weight = m.weights if getattr(m, "flat", False) else m.weight
        fan_in = np.prod(m.shape[1:]) if isinstance(m, originals.HardBinaryConv) \
            else m.weight[0].numel()
        normal(weight, (2 / fan_in) ** 0.5)
        if getattr(m, "bias", None) is not None:
          normal(m.bias, 0.2)
  return net.eval()


def save_as_trainer(net: torch.nn.Module, path) -> None:
  """As the originals' trainers save: nn.DataParallel's 'module.' prefix, in {'state_dict'}."""
  state = {f"module.{k}": v for k, v in net.state_dict().items()}
  torch.save({"epoch": 3, "state_dict": state, "best_top1_acc": 0.1}, path)


def load_as_training_does(out, model, image_shape):
  """What train.py does with --config.teacher=out (init_from, distill_teacher alike): resolve,
  then load checked against the model's own variables."""
  expected = models.variable_shapes(model, image_shape)
  return checkpoint.load_source({"teacher": str(out)}, "teacher", "/nonexistent-workdir",
                                "step2", expected)[1]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_logits_equal_the_originals(case, tmp_path):
  source, build, precision = CASES[case]
  net = randomized(build())
  save_as_trainer(net, tmp_path / "model.pth.tar")
  record = convert.convert_file(source, str(tmp_path / "model.pth.tar"), str(tmp_path / "out"))
  # ReActNet's real teacher is a distillation teacher of another architecture than the student.
  field = "distill_teacher" if source == "torchvision_resnet34" else "init_from"
  assert record["use"].startswith(f"--config.{field}=")

  model = models.from_config(record["model"], record["num_classes"], precision=precision)
  variables = load_as_training_does(tmp_path / "out", model, (32, 32, 3))
  images = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  ours = np.asarray(apply.lower(variables, images).compile(compiler_options=FAST_COMPILE)(
      variables, images))

  originals.ZEROS_SIGNED[0] = 0
  with torch.no_grad():
    theirs = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  assert originals.ZEROS_SIGNED[0] == 0, "torch.sign met an exact 0: pick another seed"
  assert ours.shape == theirs.shape == (2, 10)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())


@pytest.mark.parametrize("source, build, fields", [
    ("reactnet_resnet18", originals.BiRealNet, {"name": "resnet18", "react": True}),
    ("reactnet_a", lambda: originals.ReActNetA((32, 64, 128, 128, 256, 256) + (512,) * 6
                                               + (1024,) * 2), {"name": "reactnet_a"}),
    ("irnet_resnet20", originals.IRNetResNet, {"name": "resnet20"}),
    ("torchvision_resnet34", originals.TorchvisionResNet, {"name": "resnet34_torchvision"}),
])
def test_published_sizes_are_the_registered_models(source, build, fields):
  """At the originals' own widths the tensors fill the registered model with its defaults: the
  recipes' configs (configs/imagenet.py, ...) take the published checkpoints as they are."""
  variables, inferred = convert.convert(source, convert.tensors_of(build().state_dict()))
  assert convert.config_fields(convert.SOURCES[source].model, inferred) == fields
  assert inferred["num_classes"] == (10 if source == "irnet_resnet20" else 1000)


# --- what a user gets wrong ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def irnet_state():
  """IR-Net's ResNet-20 tensors, as convert reads them."""
  return convert.tensors_of(randomized(originals.IRNetResNet()).state_dict())


@pytest.mark.parametrize("change, named", [
    (lambda sd: sd.update({"layer1.0.extra.weight": np.ones(3)}), "layer1.0.extra.weight"),
    (lambda sd: sd.pop("layer2.1.bn2.running_var"), "layer2.1.bn2.running_var"),
    (lambda sd: sd.update({"layer2.1.bn2.bias": np.ones(33)}), "layer2.1.bn2.bias"),
    (lambda sd: sd.update({"layer3.2.conv1.weight": np.ones((64, 64, 1, 1))}),
     "layer3.2.conv1.weight"),
])
def test_a_wrong_tensor_is_named(irnet_state, change, named):
  state = dict(irnet_state)
  change(state)
  with pytest.raises(ValueError, match=named.replace(".", r"\.")):
    convert.convert("irnet_resnet20", state)


def test_another_original_is_refused_with_the_fix(irnet_state):
  with pytest.raises(ValueError, match="--from=reactnet_a"):
    convert.convert("reactnet_a", irnet_state)
  with pytest.raises(ValueError, match="choose one of"):
    convert.convert("resnet20", irnet_state)


def test_reading_a_bare_state_dict_and_an_npz(tmp_path):
  net = originals.IRNetResNet()
  torch.save(net.state_dict(), tmp_path / "bare.pth")
  state = convert.read_state_dict(str(tmp_path / "bare.pth"))
  expected = {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}
  assert set(state) == expected
  assert all(v.dtype == np.float32 for v in state.values())
  np.savez(tmp_path / "bare.npz", **{k: v.numpy() for k, v in net.state_dict().items()})
  from_npz = convert.read_state_dict(str(tmp_path / "bare.npz"))  # no PyTorch needed
  assert set(from_npz) == expected
  assert all(np.array_equal(from_npz[k], state[k]) for k in expected)


def test_without_torch_the_message_says_how(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)
  with pytest.raises(ImportError, match="pip install torch"):
    convert.read_state_dict(str(tmp_path / "any.pth"))


@pytest.mark.slow
def test_command_line(tmp_path):
  """The documented command, whose folder then loads as a teacher of the recorded model."""
  save_as_trainer(randomized(originals.IRNetResNet(widths=(8, 16, 32))), tmp_path / "m.th")
  out = tmp_path / "converted"
  result = subprocess.run(
      [sys.executable, "-m", "bmd_jax.tools.convert", "--from=irnet_resnet20",
       f"--state_dict={tmp_path / 'm.th'}", f"--out={out}"],
      cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
      timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"--config.init_from={out}" in result.stdout
  assert "with config.model: name=resnet20, widths=(8, 16, 32)" in result.stdout
  record = json.loads((out / "conversion.json").read_text())
  assert record["model"] == {"name": "resnet20", "widths": [8, 16, 32]}
  model = models.from_config({**record["model"], "widths": (8, 16, 32)}, record["num_classes"])
  load_as_training_does(out, model, (32, 32, 3))
  # A second conversion into the same folder is refused, not mixed in.
  with pytest.raises(FileExistsError, match="new folder"):
    convert.convert_file("irnet_resnet20", str(tmp_path / "m.th"), str(out))
