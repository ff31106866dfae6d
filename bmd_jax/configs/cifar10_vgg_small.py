"""CIFAR-10, VGG-Small on IR-Net's VGG-Small schedule: lr 0.007, 300 epochs, EDE t from 0.1.

    python -m bmd_jax.main --config=configs/cifar10_vgg_small.py --workdir=runs/c10_vgg

IR-Net's CIFAR-10/VGG-Small/main.py trains with SGD (momentum 0.9, weight decay 1e-4 on every
parameter), lr 0.007 on a cosine to 0 over 300 epochs, batch 128, and EDE's t rising from
T_min = 0.1 to T_max = 10 (its ResNet-20 trainer: lr 0.1, 400 epochs, T_min = 1e-3). Those are
the values set here; the rest, BD-BNN's two steps (each on this schedule) and the CIFAR
statistics of BD-BNN's loader (IR-Net normalizes with ImageNet's), come from configs/cifar10.py.
"""

from bmd_jax.infra.config_files import load_sibling


def get_config():
  config = load_sibling(__file__, "cifar10.py")
  config.model.name = "vgg_small"
  config.learning_rate = 0.007
  config.num_epochs = 300.0
  config.estimators.ede_t_min = 0.1
  config.estimators.ede_t_max = 10.0
  return config
