"""Default config: a binary CNN on the built-in digits, kurtosis regularization on.

Runs offline on 2 CPU cores in about a minute:

    python -m bmd_jax.main --config=configs/default.py --workdir=runs/digits

Every field can be overridden on the command line, e.g. ``--config.num_epochs=5``.
Fields shared with Flax's ImageNet example keep its names and meaning.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # Data. dataset: 'digits' (built in), 'image_folder' (<data_dir>/train/<class>/*, and
  # <data_dir>/val or /test), 'tfds' (tfds_name, with data_dir as TFDS data_dir), 'auto'
  # (an image folder when <data_dir>/train exists, else TFDS), or 'synthetic' (random images
  # and labels of image_size, channels and synthetic_classes, made from the seed: any recipe
  # without its data, e.g. a smoke test of a new TPU pod or GPU node).
  config.dataset = "digits"
  config.data_dir = ""
  config.tfds_name = "cifar10"  # any TFDS name, optionally name:version
  config.synthetic_classes = 0  # 0: the class count of tfds_name in TFDS's catalog
  config.synthetic_train_examples = 10_000  # an epoch of ~20 ImageNet batches: epoch ends,
  config.synthetic_eval_examples = 1_000  # evaluations and checkpoints come early
  config.skip_unreadable_images = False  # False: an unreadable image is an error naming it
  config.cache_decoded_images = False  # decode every image once into memory (same-size images)
  config.split_seed = 0
  config.num_workers = 0  # grain worker processes per host
  # 'grain': per-host loaders (any size of data); 'device': the splits held in device memory,
  # shuffled and augmented inside jit (data/on_device.py; data sets that fit, no grain needed).
  config.input_path = "grain"
  config.image_size = 8  # model input is image_size x image_size x channels
  config.channels = 1
  config.augment = "none"  # 'none' | 'cifar' | 'imagenet' (docs/METHOD.md section 7)
  config.mean = (0.305,)
  config.std = (0.376,)

  # Model: any name from bmd_jax.models.list_models(); the other fields go to its constructor.
  config.model = ml_collections.ConfigDict()
  config.model.name = "small_cnn"
  config.model.precision = "binary"  # 'full' | 'binary_activations' | 'binary'
  config.model.input_quantizer = "ste"
  config.model.kernel_quantizer = "ste"
  config.model.scale_mode = "mean_abs"  # 'none' | 'mean_abs' | 'irnet'
  # An optimization barrier on each binary layer's binarized input, in CPU programs only: the
  # train step keeps it where that is safe, and its weight gradients then read the stored input
  # instead of recomputing it (bmd_jax/xla_cpu/cpu_barriers.py). Values are the same either way.
  config.model.store_binary_input = True
  # Compute dtype of activations and convolutions: 'bfloat16' is mixed precision (+-1 operands
  # are exact in it); latent weights, optimizer state, batch-norm statistics and losses stay
  # float32 whatever it is.
  config.model.dtype = "float32"

  # Traced arguments of the estimators (changing them never recompiles).
  config.estimators = ml_collections.ConfigDict()
  config.estimators.ste_clip_value = 1.0
  config.estimators.swish_beta = 5.0
  config.estimators.ede_t_min = 1e-2  # BD-BNN's release; IR-Net's CIFAR trainer uses 1e-3
  config.estimators.ede_t_max = 10.0
  # EDE's t advances at each epoch start (IR-Net) or every step ('step': short runs).
  config.estimators.schedule_per = "epoch"

  # Loss: L = sum over terms of loss.<term>.weight * term (docs/METHOD.md section 5). Each
  # block is one term of bmd_jax/core/objective.py (TERMS): its weight and its options.
  config.loss = ml_collections.ConfigDict()
  config.loss.ce = {"weight": 1.0}  # cross-entropy with the labels
  # L_K covers every conv but the first, real shortcut/downsample convs included (the release's
  # selection), in the original's definition order: `python -m bmd_jax.tools.summary` lists them.
  config.loss.kurtosis = {
      "weight": 1.0,
      "target": 1.8,  # the target of every layer...
      "targets": (),  # ...unless one per layer is given here, in that order
      "mode": "avg",  # 'avg' | 'sum' | 'max'
      "start_epoch": 0,
      "include_shortcuts": True,  # False: leave shortcut/downsample convs out
      # 'latent': the kurtosis of the raw latent tensor (the release's); 'standardized': of
      # each output channel standardized, what sign() sees under scale_mode 'irnet'.
      "view": "latent",
  }
  # WDM needs a teacher of the student's architecture (config.teacher).
  config.loss.wdm = {
      "weight": 0.0,
      "form": "softmax_kl",  # 'softmax_kl' | 'histogram' | 'released'
      "temperature": 4.0,  # softmax_kl's options: T, and how a layer's channels reduce:
      # 'channel_mean' (the old form: as weak as weight decay), 'channel_sum', or 'weight_sum'
      # (a gradient comparable to CE's; docs/METHOD.md section 4)
      "reduction": "channel_mean",
      "bins": 64,  # histogram's options: bins, and the kernel width in weight units
      "bandwidth": 0.0,  # (0: the bin width)
      "include_shortcuts": False,
  }
  config.loss.kd = {"weight": 0.0}  # output distillation; needs a teacher or distill_teacher

  # Optimization.
  config.optimizer = "adam"  # 'sgd' (with momentum) | 'adam'
  config.learning_rate = 5e-3
  config.momentum = 0.9
  config.lr_schedule = "cosine"  # 'cosine' | 'linear' (decay to 0) | 'constant'
  config.warmup_epochs = 0.0
  config.weight_decay = 0.0
  config.weight_decay_kernels_only = True  # decay conv/dense kernels only, as the recipes do

  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 30.0
  config.num_train_steps = -1  # -1: from num_epochs
  config.steps_per_eval = -1  # -1: the whole eval split

  # Devices: num_devices=-1 uses every device of every process; fsdp shards the
  # parameters and optimizer state over the data axis (large leaves only).
  config.num_devices = -1
  config.fsdp = False

  config.log_every_steps = 50
  # Each loss term's gradient norm (grads/<term>, and its ratio to cross-entropy's,
  # grads/<term>_over_ce) at each log line, on the last step's batch: one backward pass a term.
  config.log_term_gradients = True
  # Per binary layer at each log line (training/diagnostics.py): the share of pre-sign inputs
  # and of latent weights where the layer's estimator passes under 1% of its peak gradient,
  # and the share of weight signs flipped since the last line. One forward pass of one batch.
  config.log_layer_diagnostics = True
  config.eval_every_epochs = 10.0
  # float32 matmuls and convolutions in evaluation ('highest'), so that a GPU's TF32 does not
  # move top-1; 'default' lets the platform choose.
  config.eval_precision = "highest"
  # Checkpoints (bmd_jax/training/loop_schedule.py): every N steps, every N epochs, every N minutes
  # (each 0: off), and always at a stage's end, on SIGTERM and before stop_at_time.
  config.checkpoint_every_steps = 200
  config.checkpoint_every_epochs = 1.0
  config.checkpoint_every_minutes = 0.0
  config.checkpoint_keep = 3
  # Steps per dispatch on the device input path (dispatch.py): 0 runs up to the next log,
  # evaluation or step-based checkpoint in one program on a GPU/TPU, one step on CPU (where
  # XLA runs the step several times slower inside a loop); N caps it at N steps.
  config.steps_per_dispatch = 0
  # Seconds since the epoch (0: none): the run saves and exits (status 75, as after SIGTERM)
  # at the last dispatch boundary before it, at the pace measured so far; a GPU window's end.
  config.stop_at_time = 0.0
  # A workdir's checkpoint is resumed only under the config it was written with, but for the
  # fields in checkpoint.RESUMABLE_FIELDS; True continues it under a changed config on purpose
  # (the differences are logged).
  config.resume_despite_config_change = False

  # Stages, run in order; each applies its overrides to the fields above (see
  # training/stages.py). init_from / teacher / distill_teacher: an earlier stage's name or a
  # checkpoint folder. teacher: the student's architecture at teacher_precision; WDM's teacher,
  # and output distillation's unless distill_teacher is set. distill_teacher: output
  # distillation's own teacher, a model of any registered architecture and precision that
  # distill_teacher_model describes as `model` does (name '': the student's, at
  # teacher_precision), e.g. a real ResNet-34 ('resnet34_torchvision').
  config.init_from = ""
  config.teacher = ""
  config.teacher_precision = "binary_activations"
  config.distill_teacher = ""
  config.distill_teacher_model = ml_collections.ConfigDict({"name": ""})
  config.stages = "train"
  config.stage_overrides = ml_collections.ConfigDict({"train": {}})
  return config
