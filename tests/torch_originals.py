"""The originals' PyTorch networks, transcribed for the converter's tests: the same modules,
attribute names, order and forward passes, with the widths as arguments (the originals hard-code
them) so that tests run narrow networks.

    BiRealNet      liuzechun/ReActNet resnet/2_step2/birealnet.py (step=1: resnet/1_step1)
    ReActNetA      liuzechun/ReActNet mobilenet/2_step2/reactnet.py `reactnet` (step=1: 1_step1)
    IRNetResNet    htqin/IR-Net CIFAR-10/ResNet20/1w1a/resnet.py with BasicBlock_1w1a and
                   modules/ir_1w1a.py IRConv2d (its k, t are plain attributes, not in the state
                   dict; the forward pass does not use them, and .cuda() is left out)
    TorchvisionResNet  torchvision/models/resnet.py ResNet with BasicBlock (resnet34)

Signs are the originals' torch.sign, which gives 0 at 0 where bmd_jax gives +1; `sign` counts
exact zeros so a test can check that none occurred (inputs to sign are sums of random floats).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

ZEROS_SIGNED = [0]  # how many exact zeros torch.sign has seen


def sign(x):
  ZEROS_SIGNED[0] += int((x == 0).sum())
  return torch.sign(x)


# --- ReActNet (both files share these) ------------------------------------------------------

class BinaryActivation(nn.Module):
  def forward(self, x):
    mask1, mask2, mask3 = x < -1, x < 0, x < 1
    out1 = (-1) * mask1.float() + (x * x + 2 * x) * (1 - mask1.float())
    out2 = out1 * mask2.float() + (-x * x + 2 * x) * (1 - mask2.float())
    out3 = out2 * mask3.float() + 1 * (1 - mask3.float())
    return sign(x).detach() - out3.detach() + out3


class LearnableBias(nn.Module):
  def __init__(self, out_chn):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(1, out_chn, 1, 1))

  def forward(self, x):
    return x + self.bias.expand_as(x)


class HardBinaryConv(nn.Module):
  """`flat=False`: resnet/2_step2's (param `weight`, OIHW); `flat=True`: mobilenet/2_step2's
  (param `weights`, shape (O*I*k*k, 1), viewed as OIHW)."""

  def __init__(self, in_chn, out_chn, kernel_size=3, stride=1, padding=1, flat=False):
    super().__init__()
    self.stride, self.padding, self.flat = stride, padding, flat
    self.shape = (out_chn, in_chn, kernel_size, kernel_size)
    if flat:
      self.weights = nn.Parameter(torch.rand((math.prod(self.shape), 1)) * 0.001)
    else:
      self.weight = nn.Parameter(torch.rand(self.shape) * 0.001)

  def forward(self, x):
    real_weights = self.weights.view(self.shape) if self.flat else self.weight
    scaling_factor = real_weights.abs().mean(dim=3, keepdim=True).mean(dim=2, keepdim=True) \
        .mean(dim=1, keepdim=True).detach()
    binary_weights_no_grad = scaling_factor * sign(real_weights)
    cliped_weights = torch.clamp(real_weights, -1.0, 1.0)
    binary_weights = binary_weights_no_grad.detach() - cliped_weights.detach() + cliped_weights
    return F.conv2d(x, binary_weights, stride=self.stride, padding=self.padding)


def conv3x3(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
  return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BiRealBlock(nn.Module):
  """birealnet.py's BasicBlock: one binary conv with its shortcut."""

  def __init__(self, inplanes, planes, stride=1, downsample=None, step=2):
    super().__init__()
    self.move0 = LearnableBias(inplanes)
    self.binary_activation = BinaryActivation()
    self.binary_conv = (HardBinaryConv(inplanes, planes, stride=stride) if step == 2
                        else conv3x3(inplanes, planes, stride=stride))
    self.bn1 = nn.BatchNorm2d(planes)
    self.move1 = LearnableBias(planes)
    self.prelu = nn.PReLU(planes)
    self.move2 = LearnableBias(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.bn1(self.binary_conv(self.binary_activation(self.move0(x))))
    residual = self.downsample(x) if self.downsample is not None else x
    return self.move2(self.prelu(self.move1(out + residual)))


class BiRealNet(nn.Module):
  def __init__(self, layers=(4, 4, 4, 4), widths=(64, 128, 256, 512), num_classes=1000, step=2):
    super().__init__()
    self.inplanes, self.step = widths[0], step
    self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(widths[0], layers[0])
    self.layer2 = self._make_layer(widths[1], layers[1], stride=2)
    self.layer3 = self._make_layer(widths[2], layers[2], stride=2)
    self.layer4 = self._make_layer(widths[3], layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(widths[3], num_classes)

  def _make_layer(self, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(nn.AvgPool2d(kernel_size=2, stride=stride),
                                 conv1x1(self.inplanes, planes), nn.BatchNorm2d(planes))
    layers = [BiRealBlock(self.inplanes, planes, stride, downsample, self.step)]
    self.inplanes = planes
    layers += [BiRealBlock(planes, planes, step=self.step) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(self.avgpool(x).flatten(1))


class FirstConv3x3(nn.Module):
  def __init__(self, inp, oup, stride):
    super().__init__()
    self.conv1 = nn.Conv2d(inp, oup, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(oup)

  def forward(self, x):
    return self.bn1(self.conv1(x))


class ReActBlock(nn.Module):
  """reactnet.py's BasicBlock."""

  def __init__(self, inplanes, planes, stride=1, step=2):
    super().__init__()

    def binary(cin, cout, k, s=1):
      if step == 1:
        return conv3x3(cin, cout, s) if k == 3 else conv1x1(cin, cout, s)
      return HardBinaryConv(cin, cout, k, s, padding=k // 2, flat=True)

    self.move11 = LearnableBias(inplanes)
    self.binary_3x3 = binary(inplanes, inplanes, 3, stride)
    self.bn1 = nn.BatchNorm2d(inplanes)
    self.move12 = LearnableBias(inplanes)
    self.prelu1 = nn.PReLU(inplanes)
    self.move13 = LearnableBias(inplanes)
    self.move21 = LearnableBias(inplanes)
    if inplanes == planes:
      self.binary_pw = binary(inplanes, planes, 1)
      self.bn2 = nn.BatchNorm2d(planes)
    else:
      self.binary_pw_down1 = binary(inplanes, inplanes, 1)
      self.binary_pw_down2 = binary(inplanes, inplanes, 1)
      self.bn2_1 = nn.BatchNorm2d(inplanes)
      self.bn2_2 = nn.BatchNorm2d(inplanes)
    self.move22 = LearnableBias(planes)
    self.prelu2 = nn.PReLU(planes)
    self.move23 = LearnableBias(planes)
    self.binary_activation = BinaryActivation()
    self.stride, self.inplanes, self.planes = stride, inplanes, planes
    if inplanes != planes:
      self.pooling = nn.AvgPool2d(2, 2)

  def forward(self, x):
    out1 = self.bn1(self.binary_3x3(self.binary_activation(self.move11(x))))
    if self.stride == 2:
      x = self.pooling(x)
    out1 = self.move13(self.prelu1(self.move12(x + out1)))
    out2 = self.binary_activation(self.move21(out1))
    if self.inplanes == self.planes:
      out2 = self.bn2(self.binary_pw(out2)) + out1
    else:
      out2 = torch.cat([self.bn2_1(self.binary_pw_down1(out2)) + out1,
                        self.bn2_2(self.binary_pw_down2(out2)) + out1], dim=1)
    return self.move23(self.prelu2(self.move22(out2)))


class ReActNetA(nn.Module):
  def __init__(self, stage_out_channel, num_classes=1000, step=2):
    super().__init__()
    self.feature = nn.ModuleList()
    for i, channels in enumerate(stage_out_channel):
      if i == 0:
        self.feature.append(FirstConv3x3(3, channels, 2))
      else:
        # The original strides where the channels change, except into its 64 (block 1).
        stride = 2 if stage_out_channel[i - 1] != channels and i != 1 else 1
        self.feature.append(ReActBlock(stage_out_channel[i - 1], channels, stride, step))
    self.pool1 = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(stage_out_channel[-1], num_classes)

  def forward(self, x):
    for block in self.feature:
      x = block(x)
    return self.fc(self.pool1(x).flatten(1))


# --- IR-Net ------------------------------------------------------------------------------------

class IRConv2d(nn.Conv2d):
  def forward(self, input):
    w = self.weight
    bw = w - w.view(w.size(0), -1).mean(-1).view(w.size(0), 1, 1, 1)
    bw = bw / bw.view(bw.size(0), -1).std(-1).view(bw.size(0), 1, 1, 1)
    sw = torch.pow(torch.tensor([2.0] * bw.size(0)),
                   (torch.log(bw.abs().view(bw.size(0), -1).mean(-1)) / math.log(2)).round()
                   ).view(bw.size(0), 1, 1, 1).detach()
    bw = sign(bw) * sw
    ba = sign(input)
    return F.conv2d(ba, bw, self.bias, self.stride, self.padding, self.dilation, self.groups)


class LambdaLayer(nn.Module):
  def __init__(self, lambd):
    super().__init__()
    self.lambd = lambd

  def forward(self, x):
    return self.lambd(x)


class BasicBlock1w1a(nn.Module):
  def __init__(self, in_planes, planes, stride=1):
    super().__init__()
    self.conv1 = IRConv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = IRConv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:  # option A
      self.shortcut = LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2],
                                                  (0, 0, 0, 0, planes // 4, planes // 4)))

  def forward(self, x):
    out = F.hardtanh(self.bn1(self.conv1(x)) + self.shortcut(x))
    return F.hardtanh(self.bn2(self.conv2(out)) + out)


class IRNetResNet(nn.Module):
  def __init__(self, num_blocks=(3, 3, 3), widths=(16, 32, 64), num_classes=10):
    super().__init__()
    self.in_planes = widths[0]
    self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.layer1 = self._make_layer(widths[0], num_blocks[0], 1)
    self.layer2 = self._make_layer(widths[1], num_blocks[1], 2)
    self.layer3 = self._make_layer(widths[2], num_blocks[2], 2)
    self.bn2 = nn.BatchNorm1d(widths[2])
    self.linear = nn.Linear(widths[2], num_classes)

  def _make_layer(self, planes, num_blocks, stride):
    layers = []
    for s in [stride] + [1] * (num_blocks - 1):
      layers.append(BasicBlock1w1a(self.in_planes, planes, s))
      self.in_planes = planes
    return nn.Sequential(*layers)

  def forward(self, x):
    out = F.hardtanh(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.avg_pool2d(out, out.size()[3]).flatten(1)
    return self.linear(self.bn2(out))


# --- torchvision ---------------------------------------------------------------------------------

class TorchvisionBasicBlock(nn.Module):
  """torchvision.models.resnet.BasicBlock."""

  def __init__(self, inplanes, planes, stride=1, downsample=None):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = self.downsample(x) if self.downsample is not None else x
    return self.relu(out + identity)


class TorchvisionResNet(nn.Module):
  """torchvision.models.resnet.ResNet with basic blocks (resnet34: layers 3, 4, 6, 3)."""

  def __init__(self, layers=(3, 4, 6, 3), widths=(64, 128, 256, 512), num_classes=1000):
    super().__init__()
    self.inplanes = widths[0]
    self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    for i, (blocks, planes) in enumerate(zip(layers, widths)):
      setattr(self, f"layer{i + 1}", self._make_layer(planes, blocks, 1 if i == 0 else 2))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(widths[-1], num_classes)

  def _make_layer(self, planes, blocks, stride):
    downsample = None
    if stride != 1 or self.inplanes != planes:
      downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
    layers = [TorchvisionBasicBlock(self.inplanes, planes, stride, downsample)]
    self.inplanes = planes
    layers += [TorchvisionBasicBlock(planes, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(self.avgpool(x).flatten(1))
