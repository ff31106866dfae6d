"""ImageNet, ReActNet's own two-step recipe on ReAct ResNet-18: both steps distil from a real
ResNet-34, with no kurtosis term and no WDM (the reference point BD-BNN adds its terms to).

    python -m bmd_jax.main --config=configs/imagenet_reactnet_recipe.py --workdir=runs/reactnet18 \
        --config.distill_teacher=PATH

PATH is a checkpoint folder holding ``resnet34_torchvision``'s variables: torchvision's
ImageNet ResNet-34, brought over once with ``python -m bmd_jax.tools.convert
--from=torchvision_resnet34 --state_dict=resnet34.pth --out=PATH``.

Follows ReActNet (liuzechun/ReActNet, resnet/1_step1 and resnet/2_step2: train.py, run.sh):

- teacher: torchvision's real ResNet-34 (``models.resnet34(pretrained=True)``), frozen, in
  eval mode, in both steps; loss: the distributional loss alone (no cross-entropy);
- step 1: binary activations, real weights, weight decay 1e-5 on conv kernels; step 2: binary,
  initialized from step 1, no weight decay;
- Adam, lr 2.5e-3 decayed linearly to 0, batch 512, 128 epochs a step; ReActNet's ResNet-18
  (Bi-Real layout with RSign and RPReLU), ApproxSign on activations, mean |W| weight scale.

Ours: the teacher arrives as a checkpoint (``distill_teacher``) rather than downloaded; data
and augmentation are imagenet.py's.
"""

from bmd_jax.infra.config_files import load_sibling


def get_config():
  config = load_sibling(__file__, "imagenet.py")
  config.loss.ce.weight = 0.0
  config.loss.kd.weight = 1.0
  config.loss.kurtosis.weight = 0.0
  config.loss.wdm.weight = 0.0
  config.teacher = ""  # no WDM teacher
  config.distill_teacher = ""  # required: the ResNet-34 checkpoint folder
  config.distill_teacher_model.name = "resnet34_torchvision"
  config.distill_teacher_model.precision = "full"
  config.stage_overrides.step2.teacher = ""
  config.stage_overrides.step2.loss = {}
  return config
