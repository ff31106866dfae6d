"""ImageNet, ReActNet-A with ReActNet's two-step recipe (batch 256, lr 1.25e-3, 128 epochs).

    python -m bmd_jax.main --config=configs/imagenet_reactnet.py --workdir=runs/reactnet
"""

from bmd_jax.infra.config_files import load_sibling


def get_config():
  config = load_sibling(__file__, "imagenet.py")
  config.model.name = "reactnet_a"
  config.batch_size = 256
  config.eval_batch_size = 250
  config.learning_rate = 1.25e-3
  return config
