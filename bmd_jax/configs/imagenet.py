"""ImageNet with ReActNet's two-step recipe (docs/METHOD.md section 7): ReAct ResNet-18, Adam.

    python -m bmd_jax.main --config=configs/imagenet.py --workdir=runs/imagenet

runs both steps, 128 epochs each, as ``stage_overrides`` describes them:

- step1 (the teacher): binary activations, real-valued weights, weight decay 1e-5 on conv
  kernels, cross-entropy + kurtosis regularization;
- step2 (the student): binary weights and activations, initialized from step 1, which is also
  the frozen teacher (output distillation and weight distribution mimicking), no weight decay.

The top-level fields describe the final (binary) network, so
``python -m bmd_jax.tools.summary --config=configs/imagenet.py`` shows what is deployed.
Other models: ``--config.model.name=resnet34`` or ``reactnet_a`` (for ReActNet-A the authors use
batch 256 and lr 1.25e-3: ``--config.batch_size=256 --config.learning_rate=1.25e-3``).

Data: ``dataset='auto'`` reads an image folder (``data_dir/train/<class>/*.JPEG``, ``val``)
when ``data_dir/train`` exists, else TFDS's ``imagenet2012`` (its manual download). The
number of classes comes from the data set.
"""

from bmd_jax.infra.config_files import load_sibling, use_two_steps


def get_config():
  config = load_sibling(__file__, "default.py")

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
  config.model.precision = "binary"  # step 2's; step 1 overrides it
  config.model.input_quantizer = "approx_sign"
  config.model.kernel_quantizer = "ste"
  config.model.scale_mode = "mean_abs"

  config.optimizer = "adam"
  config.learning_rate = 2.5e-3
  config.lr_schedule = "linear"  # to 0
  config.weight_decay = 1e-5  # step 1's; 0 in step 2
  config.weight_decay_kernels_only = True

  config.batch_size = 512
  config.eval_batch_size = 500
  config.num_epochs = 128.0
  config.log_every_steps = 500
  config.eval_every_epochs = 1.0

  # ReActNet: distillation only (no CE) in step 2, no weight decay. The release weighs L_DL by
  # 0.9 and its WDM by 200, a weight tuned for loss.wdm.form='released'; softmax_kl's is untuned.
  return use_two_steps(config, {"ce": {"weight": 0.0}, "kd": {"weight": 0.9},
                                "wdm": {"weight": 1.0}},
                       weight_decay=0.0)
