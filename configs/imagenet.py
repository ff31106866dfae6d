"""ImageNet with ReActNet's recipe (PAPER.md section 4): ReAct ResNet-18, Adam, 128 epochs.

This is step 1 of the two-step recipe: binary activations, real-valued weights, weight decay
1e-5 on conv kernels, kurtosis regularization on.

    python -m bmd_jax.main --config=configs/imagenet.py --workdir=runs/in_step1

Step 2 (binary weights, initialized from step 1 and distilled from it) overrides
``--config.model.precision=binary --config.weight_decay=0`` and the teacher/distillation fields.
Other models: ``--config.model.name=resnet34`` or ``reactnet_a`` (for ReActNet-A the authors use
batch 256 and lr 1.25e-3: ``--config.batch_size=256 --config.learning_rate=1.25e-3``).

Data: ``dataset='auto'`` reads an image folder (``data_dir/train/<class>/*.JPEG``, ``val``)
when ``data_dir/train`` exists, else TFDS's ``imagenet2012`` (its manual download). The
number of classes comes from the data set.
"""

import importlib.util
import pathlib


def _default_config():
  path = pathlib.Path(__file__).with_name("default.py")
  spec = importlib.util.spec_from_file_location("bmd_jax_configs_default", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def get_config():
  config = _default_config()

  config.dataset = "auto"
  config.tfds_name = "imagenet2012"
  config.data_dir = ""
  config.image_size = 224
  config.channels = 3
  config.augment = "imagenet"  # random-resized crop, flip, lighting; eval: resize 256, crop 224
  config.mean = (0.485, 0.456, 0.406)
  config.std = (0.229, 0.224, 0.225)

  config.model.name = "resnet18"
  config.model.react = True  # RSign + RPReLU; False: IR-Net's hardtanh blocks
  config.model.precision = "binary_activations"  # step 1
  config.model.input_quantizer = "approx_sign"
  config.model.kernel_quantizer = "ste"
  config.model.scale_mode = "mean_abs"

  config.optimizer = "adam"
  config.learning_rate = 2.5e-3
  config.lr_schedule = "linear"  # to 0
  config.weight_decay = 1e-5  # step 1; 0 in step 2
  config.weight_decay_kernels_only = True

  config.batch_size = 512
  config.eval_batch_size = 500
  config.num_epochs = 128.0
  config.log_every_steps = 500
  config.eval_every_epochs = 1.0
  return config
