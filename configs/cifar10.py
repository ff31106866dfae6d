"""CIFAR-10 with IR-Net's recipe (PAPER.md section 4): binary ResNet-20, EDE, SGD, 400 epochs.

    python -m bmd_jax.main --config=configs/cifar10.py --workdir=runs/c10

Data: ``dataset='auto'`` reads an image folder when ``data_dir/train`` exists, else TFDS's
``cifar10``. Other models: ``--config.model.name=resnet18_cifar`` or ``vgg_small``.
A short run (smoke test, a few minutes on a CPU): ``--config.num_epochs=1
--config.num_train_steps=50 --config.steps_per_eval=4``.

Every field of configs/default.py is kept (it is loaded from this file's folder, so the
default stays the one source of truth); only the recipe's values are overridden here.
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
  config.tfds_name = "cifar10"
  config.data_dir = ""
  config.image_size = 32
  config.channels = 3
  config.augment = "cifar"  # random crop 32 with 4-pixel padding, horizontal flip
  config.mean = (0.4914, 0.4822, 0.4465)
  config.std = (0.2023, 0.1994, 0.2010)

  config.model.name = "resnet20"
  config.model.precision = "binary"  # IR-Net trains in one step
  config.model.input_quantizer = "ede"
  config.model.kernel_quantizer = "ede"
  config.model.scale_mode = "irnet"

  config.optimizer = "sgd"
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.lr_schedule = "cosine"
  config.weight_decay = 1e-4
  config.weight_decay_kernels_only = False  # IR-Net's torch SGD decays every parameter

  config.batch_size = 128
  config.eval_batch_size = 256
  config.num_epochs = 400.0
  config.log_every_steps = 100
  config.eval_every_epochs = 5.0
  return config
