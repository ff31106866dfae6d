"""torchvision ResNet state dicts become resnet34_torchvision teacher checkpoints."""

import numpy as np
import pytest

from bmd_jax import torchvision_import, train

WIDTHS, STAGES = (4, 8, 8, 8), (1, 2, 1, 1)


def torchvision_state_dict(rng):
  """The keys and shapes torchvision's ResNet (basic blocks) has, at small widths."""
  sd = {}

  def bn(name, c):
    sd.update({f"{name}.weight": rng.standard_normal(c), f"{name}.bias": rng.standard_normal(c),
               f"{name}.running_mean": rng.standard_normal(c),
               f"{name}.running_var": rng.uniform(0.5, 2, c),
               f"{name}.num_batches_tracked": np.array(7)})

  sd["conv1.weight"] = rng.standard_normal((WIDTHS[0], 3, 7, 7))
  bn("bn1", WIDTHS[0])
  cin = WIDTHS[0]
  for stage, (blocks, c) in enumerate(zip(STAGES, WIDTHS), start=1):
    for b in range(blocks):
      prefix = f"layer{stage}.{b}"
      sd[f"{prefix}.conv1.weight"] = rng.standard_normal((c, cin, 3, 3))
      bn(f"{prefix}.bn1", c)
      sd[f"{prefix}.conv2.weight"] = rng.standard_normal((c, c, 3, 3))
      bn(f"{prefix}.bn2", c)
      if b == 0 and stage > 1:
        sd[f"{prefix}.downsample.0.weight"] = rng.standard_normal((c, cin, 1, 1))
        bn(f"{prefix}.downsample.1", c)
      cin = c
  sd["fc.weight"], sd["fc.bias"] = rng.standard_normal((10, cin)), rng.standard_normal(10)
  return sd


def test_state_dict_becomes_a_loadable_teacher(digits_config, tmp_path):
  sd = torchvision_state_dict(np.random.default_rng(0))
  variables = torchvision_import.resnet_variables(sd)
  digits_config.distill_teacher = torchvision_import.save_teacher(variables, tmp_path / "t34")
  digits_config.distill_teacher_model = {"name": "resnet34_torchvision", "widths": WIDTHS,
                                         "stage_sizes": STAGES}
  # Loading checks every name and shape against the model's own variables.
  _, loaded = train._distill_teacher(digits_config, "step1", str(tmp_path), 10, (32, 32, 3))
  p, s = loaded["params"], loaded["batch_stats"]
  np.testing.assert_allclose(p["stem_conv"]["kernel"][2, 5, 1, 3], sd["conv1.weight"][3, 1, 2, 5],
                             rtol=1e-6)
  np.testing.assert_allclose(p["stage2_block0"]["downsample_conv"]["kernel"][0, 0],
                             sd["layer2.0.downsample.0.weight"][:, :, 0, 0].T, rtol=1e-6)
  np.testing.assert_allclose(s["stage2_block1"]["bn2"]["var"], sd["layer2.1.bn2.running_var"],
                             rtol=1e-6)
  np.testing.assert_allclose(p["classifier"]["kernel"], sd["fc.weight"].T, rtol=1e-6)


def test_a_foreign_key_is_an_error():
  with pytest.raises(ValueError, match="layer1.0.conv3.weight"):
    torchvision_import.resnet_variables({"layer1.0.conv3.weight": np.zeros((4, 4, 1, 1))})
