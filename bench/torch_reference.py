"""The PyTorch side of bench/train_step.py: bmd_jax's binary ResNets and BD-BNN loss, written
for PyTorch eager so that both frameworks do the same work.

- ResNet-20 as bmd_jax.models.resnet_cifar.CifarResNet (IR-Net's): real 3x3 stem conv, BN,
  hardtanh; blocks of [binary conv -> BN -> + shortcut -> hardtanh] x 2, option-A shortcuts
  (stride-2 subsampling, zero channel padding); mean pool; BatchNorm1d; dense classifier.
- ResNet-18 as bmd_jax.models.resnet_imagenet.BiRealResNet (Bi-Real / ReActNet with RSign and
  RPReLU when ``react``): 7x7 stride-2 stem, max pool, per-conv shortcuts, real downsample
  (2x2 avg pool, 1x1 conv, BN).
- Estimators as autograd Functions with the gradients of bmd_jax.core.quantizers: EDE, clipped STE,
  ApproxSign; sign(0) = +1. Weight scaling: IR-Net's standardization with a power-of-two scale
  (detached, multiplying the gradient), or mean |W| per output channel (ReActNet's
  HardBinaryConv: detached and left out of the gradient), as in bmd_jax.
- Losses as bmd_jax.core.losses: cross-entropy, kurtosis loss (ddof=1 variance, per layer
  (kurt - target)^2, mean), WDM softmax_kl (per output channel over the fan-in, T^2 scaled,
  reduced over channels as loss.wdm.reduction says, shortcut convs excluded), output
  distillation.

Weights are copied from a bmd_jax variables tree (``load_flax_variables``), so a test can check
that both compute the same loss and gradients. BN differs in one thing that does not touch the
loss or gradients: PyTorch updates its running variance with the unbiased batch variance, Flax
with the biased one.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# --- estimators -------------------------------------------------------------------

def binarize(x):
  return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)


class EDESign(torch.autograd.Function):
  """IR-Net's EDE: gradient k * t * (1 - tanh^2(t x))."""

  @staticmethod
  def forward(ctx, x, t, k):
    ctx.save_for_backward(x)
    ctx.t, ctx.k = t, k
    return binarize(x)

  @staticmethod
  def backward(ctx, g):
    (x,) = ctx.saved_tensors
    return g * (ctx.k * ctx.t * (1 - torch.tanh(ctx.t * x) ** 2)), None, None


class STESign(torch.autograd.Function):
  """Clipped straight-through estimator: gradient 1 where |x| <= clip_value."""

  @staticmethod
  def forward(ctx, x, clip_value):
    ctx.save_for_backward(x)
    ctx.clip_value = clip_value
    return binarize(x)

  @staticmethod
  def backward(ctx, g):
    (x,) = ctx.saved_tensors
    return torch.where(x.abs() <= ctx.clip_value, g, torch.zeros_like(g)), None


class ApproxSign(torch.autograd.Function):
  """Bi-Real Net's ApproxSign: gradient 2 - 2|x| on |x| <= 1."""

  @staticmethod
  def forward(ctx, x):
    ctx.save_for_backward(x)
    return binarize(x)

  @staticmethod
  def backward(ctx, g):
    (x,) = ctx.saved_tensors
    return g * torch.where(x.abs() <= 1, 2 - 2 * x.abs(), torch.zeros_like(x))


def quantize(x, name, est):
  """est: the estimator arguments, as training.train.estimator_args returns them (floats)."""
  if name == "ede":
    return EDESign.apply(x, est["ede"]["t"], est["ede"]["k"])
  if name == "ste":
    return STESign.apply(x, est["ste"]["clip_value"])
  if name == "approx_sign":
    return ApproxSign.apply(x)
  raise ValueError(f"no PyTorch estimator {name!r}")


def ede_schedule(progress, t_min=1e-2, t_max=10.0):
  t = t_min * (t_max / t_min) ** progress
  return t, max(1.0 / t, 1.0)


def default_estimator_args(progress=0.0):
  t, k = ede_schedule(progress)
  return {"ste": {"clip_value": 1.0}, "ede": {"t": t, "k": k}}


# --- layers -----------------------------------------------------------------------

class BinaryConv2d(nn.Conv2d):
  """Conv2d with binarized input and weight; ``precision`` as bmd_jax.core.layers."""

  def __init__(self, cin, cout, kernel, stride, precision, input_quantizer, kernel_quantizer,
               scale_mode):
    super().__init__(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
    self.precision, self.scale_mode = precision, scale_mode
    self.input_quantizer, self.kernel_quantizer = input_quantizer, kernel_quantizer
    self.est = default_estimator_args()

  def binary_weight(self):
    w = self.weight
    if self.scale_mode == "irnet":
      centered = w - w.mean(dim=(1, 2, 3), keepdim=True)
      n = w[0].numel()
      std = torch.sqrt((centered ** 2).sum(dim=(1, 2, 3), keepdim=True) / max(n - 1, 1))
      w_hat = centered / (std + 1e-8)
      scale = (2.0 ** torch.round(torch.log2(w_hat.abs().mean(dim=(1, 2, 3), keepdim=True)
                                              + 1e-8))).detach()
      return scale * quantize(w_hat, self.kernel_quantizer, self.est)
    if self.scale_mode == "mean_abs":
      # ReActNet's HardBinaryConv: alpha * sign(W) forward, alpha kept out of the gradient.
      scale = w.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
      b = quantize(w, self.kernel_quantizer, self.est)
      return (scale * b).detach() + (b - b.detach())
    return quantize(w, self.kernel_quantizer, self.est)

  def forward(self, x):
    if self.precision == "full":
      return super().forward(x)
    x = quantize(x, self.input_quantizer, self.est)
    w = self.weight if self.precision == "binary_activations" else self.binary_weight()
    return F.conv2d(x, w, None, self.stride, self.padding)


def batch_norm(c):
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)


class CifarBlock(nn.Module):
  def __init__(self, cin, cout, stride, spec):
    super().__init__()
    self.stride, self.pad = stride, cout - cin
    self.conv1 = BinaryConv2d(cin, cout, 3, stride, **spec)
    self.bn1 = batch_norm(cout)
    self.conv2 = BinaryConv2d(cout, cout, 3, 1, **spec)
    self.bn2 = batch_norm(cout)

  def forward(self, x):
    residual = x
    if self.stride != 1 or self.pad:
      residual = x[:, :, ::self.stride, ::self.stride]
      residual = F.pad(residual, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
    y = F.hardtanh(self.bn1(self.conv1(x)) + residual)
    return F.hardtanh(self.bn2(self.conv2(y)) + y)


class CifarResNet(nn.Module):
  """bmd_jax's resnet20 (option-A shortcuts only)."""

  def __init__(self, stage_sizes=(3, 3, 3), widths=(16, 32, 64), num_classes=10,
               precision="binary", input_quantizer="ede", kernel_quantizer="ede",
               scale_mode="irnet"):
    super().__init__()
    spec = dict(precision=precision, input_quantizer=input_quantizer,
                kernel_quantizer=kernel_quantizer, scale_mode=scale_mode)
    self.stem_conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.stem_bn = batch_norm(widths[0])
    blocks, cin = {}, widths[0]
    for stage, (n, c) in enumerate(zip(stage_sizes, widths)):
      for b in range(n):
        blocks[f"stage{stage + 1}_block{b}"] = CifarBlock(
            cin, c, 2 if stage > 0 and b == 0 else 1, spec)
        cin = c
    self.blocks = nn.ModuleDict(blocks)
    self.classifier_bn = nn.BatchNorm1d(cin, eps=1e-5, momentum=0.1)
    self.classifier = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = F.hardtanh(self.stem_bn(self.stem_conv(x)))
    for block in self.blocks.values():
      x = block(x)
    return self.classifier(self.classifier_bn(x.mean(dim=(2, 3))))


class LearnableBias(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(c))

  def forward(self, x):
    return x + self.bias.view(1, -1, 1, 1)


class RPReLU(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.shift_in = nn.Parameter(torch.zeros(c))
    self.slope = nn.Parameter(torch.full((c,), 0.25))
    self.shift_out = nn.Parameter(torch.zeros(c))

  def forward(self, x):
    y = x + self.shift_in.view(1, -1, 1, 1)
    y = torch.where(y >= 0, y, self.slope.view(1, -1, 1, 1) * y)
    return y + self.shift_out.view(1, -1, 1, 1)


class BiRealBlock(nn.Module):
  def __init__(self, cin, cout, stride, spec, react):
    super().__init__()
    self.react, self.stride = react, stride
    self.has_downsample = stride != 1 or cin != cout
    if self.has_downsample:
      self.downsample_conv = nn.Conv2d(cin, cout, 1, bias=False)
      self.downsample_bn = batch_norm(cout)
    for i, (ci, s) in enumerate([(cin, stride), (cout, 1)], start=1):
      if react:
        setattr(self, f"rsign{i}", LearnableBias(ci))
        setattr(self, f"rprelu{i}", RPReLU(cout))
      setattr(self, f"conv{i}", BinaryConv2d(ci, cout, 3, s, **spec))
      setattr(self, f"bn{i}", batch_norm(cout))

  def unit(self, x, residual, i):
    if self.react:
      x = getattr(self, f"rsign{i}")(x)
    y = getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)) + residual
    return getattr(self, f"rprelu{i}")(y) if self.react else F.hardtanh(y)

  def forward(self, x):
    residual = x
    if self.has_downsample:
      if self.stride != 1:
        residual = F.avg_pool2d(residual, 2, 2, ceil_mode=True, count_include_pad=False)
      residual = self.downsample_bn(self.downsample_conv(residual))
    y = self.unit(x, residual, 1)
    return self.unit(y, y, 2)


class BiRealResNet(nn.Module):
  """bmd_jax's resnet18 / resnet34 (Bi-Real; ReActNet's RSign and RPReLU with ``react``)."""

  def __init__(self, stage_sizes=(2, 2, 2, 2), widths=(64, 128, 256, 512), num_classes=1000,
               react=False, precision="binary", input_quantizer="approx_sign",
               kernel_quantizer="ste", scale_mode="mean_abs"):
    super().__init__()
    spec = dict(precision=precision, input_quantizer=input_quantizer,
                kernel_quantizer=kernel_quantizer, scale_mode=scale_mode)
    self.react = react
    self.stem_conv = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
    self.stem_bn = batch_norm(widths[0])
    blocks, cin = {}, widths[0]
    for stage, (n, c) in enumerate(zip(stage_sizes, widths)):
      for b in range(n):
        blocks[f"stage{stage + 1}_block{b}"] = BiRealBlock(
            cin, c, 2 if stage > 0 and b == 0 else 1, spec, react)
        cin = c
    self.blocks = nn.ModuleDict(blocks)
    self.classifier = nn.Linear(cin, num_classes)

  def forward(self, x):
    x = self.stem_bn(self.stem_conv(x))
    if not self.react:
      x = F.hardtanh(x)
    x = F.max_pool2d(x, 3, 2, 1)
    for block in self.blocks.values():
      x = block(x)
    return self.classifier(x.mean(dim=(2, 3)))


def build(name: str, **fields) -> nn.Module:
  """The PyTorch twin of bmd_jax.models.get_model(name, **fields)."""
  # dtype and the optimization barrier shape XLA's program only; the twin has neither.
  fields = {k: v for k, v in fields.items() if k not in ("dtype", "store_binary_input")}
  if name == "resnet20":
    return CifarResNet(**fields)
  if name == "resnet18":
    return BiRealResNet(**{"stage_sizes": (2, 2, 2, 2), **fields})
  raise ValueError(f"no PyTorch twin of {name!r}; have resnet20 and resnet18")


def set_estimator_args(model: nn.Module, est: dict) -> None:
  for m in model.modules():
    if isinstance(m, BinaryConv2d):
      m.est = est


# --- weights from bmd_jax -----------------------------------------------------------

def load_flax_variables(model: nn.Module, variables) -> None:
  """Copies a bmd_jax variables tree {'params', 'batch_stats'} into the PyTorch twin."""
  params, stats = variables["params"], variables.get("batch_stats", {})

  def walk(tree, prefix=()):
    for k, v in tree.items():
      if hasattr(v, "items"):
        yield from walk(v, prefix + (k,))
      else:
        yield prefix + (k,), np.asarray(v)

  state = {}
  for path, value in walk(params):
    module, leaf = ".".join(path[:-1]), path[-1]
    module = module.replace("stage", "blocks.stage", 1) if module.startswith("stage") else module
    if leaf in ("kernel", "latent_kernel"):
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
      state[f"{module}.weight"] = value
    elif leaf == "scale":
      state[f"{module}.weight"] = value
    else:  # bias, shift_in, slope, shift_out
      state[f"{module}.{leaf}"] = value
  for path, value in walk(stats):
    module = ".".join(path[:-1])
    module = module.replace("stage", "blocks.stage", 1) if module.startswith("stage") else module
    state[f"{module}.running_{path[-1]}"] = value
  own = model.state_dict()
  missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
  extra = [k for k in state if k not in own]
  if missing or extra:
    raise ValueError(f"weights do not match: missing {missing}, unexpected {extra}")
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()},
                        strict=False)


def flax_name(torch_name: str) -> str:
  """'blocks.stage1_block0.conv1.weight' -> 'stage1_block0/conv1/latent_kernel' (binary convs)."""
  return torch_name.replace("blocks.", "", 1).replace(".weight", "/latent_kernel").replace(".", "/")


# --- losses -------------------------------------------------------------------------

def binarized_weights(model: nn.Module, include_shortcuts: bool = True) -> dict:
  found = {}
  for name, m in model.named_modules():
    if isinstance(m, BinaryConv2d):
      if not include_shortcuts and any(p.startswith(("shortcut", "downsample"))
                                       for p in name.split(".")[:-1]):
        continue
      found[flax_name(name + ".weight")] = m.weight
  return {k: found[k] for k in sorted(found)}


def kurtosis(w):
  centered = w - w.mean()
  variance = (centered ** 2).sum() / (w.numel() - 1)
  return (centered ** 4).mean() / variance ** 2


def standardized(w):
  """Each output channel (dim 0 of OIHW) centred and scaled to unit (N - 1) std, as IRConv2d."""
  flat = w.reshape(w.shape[0], -1)
  centered = flat - flat.mean(dim=1, keepdim=True)
  return (centered / (centered.std(dim=1, keepdim=True) + 1e-8)).reshape(w.shape)


def kurtosis_loss(model, target=1.8, view="latent"):
  """loss.kurtosis.view: 'latent' the raw weights, 'standardized' what IR-Net's sign() sees."""
  view_of = standardized if view == "standardized" else (lambda w: w)
  per_layer = torch.stack([kurtosis(view_of(w)) for w in binarized_weights(model).values()])
  return ((per_layer - target) ** 2).mean()


# bmd_jax.core.losses.WDM_REDUCTIONS: a layer's per-channel KLs (and its fan-in) to one number.
WDM_REDUCTIONS = {
    "channel_mean": lambda kl, fan_in: kl.mean(),
    "channel_sum": lambda kl, fan_in: kl.sum(),
    "weight_sum": lambda kl, fan_in: fan_in * kl.sum(),
}


def wdm_softmax_kl(teacher: nn.Module, student: nn.Module, temperature=4.0,
                   reduction="channel_mean"):
  total = 0.0
  reduce = WDM_REDUCTIONS[reduction]
  t_layers = binarized_weights(teacher, include_shortcuts=False)
  for name, s in binarized_weights(student, include_shortcuts=False).items():
    t = t_layers[name].detach()
    log_p_t = F.log_softmax(t.reshape(t.shape[0], -1) / temperature, dim=1)
    log_p_s = F.log_softmax(s.reshape(s.shape[0], -1) / temperature, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=1)
    total = total + reduce(kl, log_p_t.shape[1]) * temperature ** 2
  return total


def distillation_loss(student_logits, teacher_logits):
  soft = F.softmax(teacher_logits.detach(), dim=-1)
  return -(soft * F.log_softmax(student_logits, dim=-1)).sum(-1).mean()


def bdbnn_loss(model, images, labels, teacher=None, kurtosis_weight=1.0, wdm_weight=1.0,
               kd_weight=1.0, kurtosis_target=1.8, wdm_temperature=4.0,
               wdm_reduction="channel_mean", kurtosis_view="latent"):
  """(total, logits, parts) as training.train.train_step's loss_fn; teacher in eval mode."""
  logits = model(images)
  parts = {"ce": F.cross_entropy(logits, labels)}
  total = parts["ce"]
  if kurtosis_weight:
    parts["kurtosis"] = kurtosis_loss(model, kurtosis_target, kurtosis_view)
    total = total + kurtosis_weight * parts["kurtosis"]
  if teacher is not None:
    with torch.no_grad():
      teacher_logits = teacher(images)
    parts["wdm"] = wdm_softmax_kl(teacher, model, wdm_temperature, wdm_reduction)
    parts["kd"] = distillation_loss(logits, teacher_logits)
    total = total + wdm_weight * parts["wdm"] + kd_weight * parts["kd"]
  return total, logits, parts


def make_optimizer(model, name="sgd", learning_rate=0.1, momentum=0.9, weight_decay=1e-4,
                   kernels_only=False):
  """SGD with momentum (or Adam) and L2 added to the gradient, as bmd_jax.training.train."""
  if kernels_only:
    decay = [p for p in model.parameters() if p.ndim == 4]
    other = [p for p in model.parameters() if p.ndim != 4]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": other, "weight_decay": 0.0}]
  else:
    groups = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
  if name == "sgd":
    return torch.optim.SGD(groups, lr=learning_rate, momentum=momentum)
  return torch.optim.Adam(groups, lr=learning_rate)


def train_step(model, optimizer, images, labels, teacher=None, **loss_kwargs):
  model.train()
  optimizer.zero_grad(set_to_none=True)
  loss, logits, _ = bdbnn_loss(model, images, labels, teacher, **loss_kwargs)
  loss.backward()
  optimizer.step()
  return loss.detach(), (logits.argmax(-1) == labels).float().mean()


@torch.no_grad()
def eval_step(model, images, labels):
  model.eval()
  logits = model(images)
  nll = F.cross_entropy(logits, labels, reduction="sum")
  return nll, (logits.argmax(-1) == labels).float().sum()

