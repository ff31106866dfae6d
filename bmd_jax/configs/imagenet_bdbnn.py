"""ImageNet, the BD-BNN release's recipe on ReAct ResNet-18, as far as its code can be read.

    python -m bmd_jax.main --config=configs/imagenet_bdbnn.py --workdir=runs/bdbnn18
    python -m bmd_jax.main --config=configs/imagenet_bdbnn.py:diffkurt ...  # per-layer targets

Two steps on imagenet.py's schedule (ReActNet's: Adam, lr 2.5e-3 linear to 0, batch 512, 128
epochs a step, weight decay 1e-5 on conv kernels in step 1 and 0 in step 2).

Follows the release (BlueAnon/BD-BNN, train.py, utils/KD_loss.py, kurtosis.py):

- the kurtosis term covers every conv but the first, real downsample convs included, in
  definition order (19 layers on ResNet-18), target 1.8, mode avg, lambda_K 1, from epoch 0;
  ``:diffkurt`` gives the release's per-layer targets (``--diffkurt``): its ``train()`` list in
  step 1 and its ``train_teacher_student()`` list in step 2;
- step 2: distributional loss weighted 0.9 (``--alpha``) and the release's WDM form
  (``loss.wdm.form='released'``: KLDivLoss on the raw weights, summed over every conv but the first
  and the downsample convs) weighted 200 (``--beta``).

Ours, where the release is ambiguous or cannot run as written:

- step 1 uses cross-entropy + kurtosis (the release's ``train()``; whether its ImageNet step 1
  ran it or the teacher-student loop is not recorded);
- step 2's teacher, for WDM and distillation alike, is step 1's network (binary activations,
  real weights), as the paper describes. The release builds ``arch_teacher(pretrained=True)``
  and loads ``--resume_teacher`` only when ``--resume`` is a file; its WDM compares layers by
  name, so only a teacher of the student's architecture gives it anything to compare;
- step 2 has no cross-entropy: ``w_lambda_ce`` is never defined by the release's arguments
  (its step 2 runs only with ``--react``, which sets it to 0, and also sets the WDM weight to 0).

The released WDM's gradient does not depend on the student (docs/METHOD.md section 4);
``--config.stage_overrides.step2.loss.wdm.form=softmax_kl`` with ``...wdm.weight=1.0`` gives
imagenet.py's form.
"""

from bmd_jax.infra.config_files import load_sibling

# The release's per-layer kurtosis targets for ImageNet (train.py, --diffkurt), one per conv
# but the first in definition order of ReActNet's ResNet-18: layer1's 4 convs, then layer2-4's
# 4 convs each with the downsample conv after the first block's conv.
RELEASE_TARGETS_STEP1 = (1.8, 1.4, 1.4, 1.4,
                         1.4, 1.2, 1.4, 1.2, 1.2,
                         1.4, 1.4, 1.4, 1.2, 1.2,
                         1.2, 1.2, 1.4, 1.0, 1.0)
RELEASE_TARGETS_STEP2 = (1.8, 1.8, 1.8, 1.8,
                         1.8, 1.8, 1.4, 1.8, 1.8,
                         1.8, 1.4, 1.4, 1.4, 1.4,
                         1.8, 1.2, 1.4, 1.2, 1.2)


def get_config(variant: str = ""):
  if variant not in ("", "diffkurt"):
    raise ValueError(f"unknown variant {variant!r} of imagenet_bdbnn.py; known: 'diffkurt'")
  config = load_sibling(__file__, "imagenet.py")
  config.loss.kurtosis.include_shortcuts = True
  config.stage_overrides.step1.loss = {}
  config.stage_overrides.step2.loss = {
      "ce": {"weight": 0.0}, "kd": {"weight": 0.9},
      "wdm": {"weight": 200.0, "form": "released", "include_shortcuts": False}}
  if variant == "diffkurt":
    config.stage_overrides.step1.loss.kurtosis = {"targets": RELEASE_TARGETS_STEP1}
    config.stage_overrides.step2.loss.kurtosis = {"targets": RELEASE_TARGETS_STEP2}
  return config
