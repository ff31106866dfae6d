"""Tests of bmd_jax.training.input_pipeline and bmd_jax.data.transforms: the shared CIFAR-10 folder,
TFDS (on tfds.testing.mock_data), the recipes' transforms, restored iterators, worker
processes and per-host shards."""

import os

import numpy as np
import pytest
from PIL import Image

from bmd_jax.training import input_pipeline
from bmd_jax.data import transforms

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CIFAR10_DIR = os.environ.get("BMD_CIFAR10_DIR",
                             os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg"))
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def make_config(**overrides):
  from bmd_jax.configs import default

  config = default.get_config()
  config.dataset = "image_folder"
  config.tfds_name = "cifar10"
  config.image_size = 32
  config.channels = 3
  config.augment = "cifar"
  config.mean, config.std = CIFAR_MEAN, CIFAR_STD
  config.skip_unreadable_images = False
  config.cache_decoded_images = False
  config.batch_size = 16
  config.eval_batch_size = 16
  config.num_workers = 0
  for key, value in overrides.items():
    config[key] = value
  return config


def take(loader_or_iterator, count):
  iterator = iter(loader_or_iterator)
  return [next(iterator) for _ in range(count)]


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["label"], y["label"])
    np.testing.assert_array_equal(x["image"], y["image"])


def write_folder(root, classes=3, per_class=4, size=(40, 30)):
  """A small image folder of noise images (train and val); returns its path."""
  rng = np.random.default_rng(0)
  for split in ("train", "val"):
    for c in range(classes):
      os.makedirs(os.path.join(root, split, f"class{c}"))
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, split, f"class{c}", f"{i}.png"))
  return str(root)


# --- the shared CIFAR-10 folder ----------------------------------------------------------------

@pytest.fixture(scope="module")
def cifar10():
  if not os.path.isdir(os.path.join(CIFAR10_DIR, "train")):
    reason = f"CIFAR-10 image folder not found at {CIFAR10_DIR} (set BMD_CIFAR10_DIR)"
    print(reason)
    pytest.skip(reason)
  config = make_config(data_dir=CIFAR10_DIR)
  return config, input_pipeline.create_datasets(config)


def test_cifar10_counts_per_split_and_class(cifar10):
  _, datasets = cifar10
  info = datasets.info
  assert (info.num_train, info.num_eval, info.num_classes) == (50000, 10000, 10)
  assert info.image_shape == (32, 32, 3) and info.num_skipped == 0
  assert datasets.eval.split_dir.endswith("test")
  np.testing.assert_array_equal(np.bincount(datasets.train.labels), [5000] * 10)
  np.testing.assert_array_equal(np.bincount(datasets.eval.labels), [1000] * 10)


def test_cifar10_label_order_is_sorted_class_names(cifar10):
  _, datasets = cifar10
  assert datasets.train.classes == CIFAR10_CLASSES == datasets.eval.classes
  for index in (0, 12345, 49999):
    record = datasets.train[index]
    folder = os.path.basename(os.path.dirname(datasets.train.path(index)))
    assert CIFAR10_CLASSES[record["label"]] == folder


def test_cifar10_decoded_image_and_transformed_range(cifar10):
  config, datasets = cifar10
  image = datasets.train[777]["image"]
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  assert image.max() > 100 and image.min() < 100  # a real picture, not a blank
  batch = take(input_pipeline.create_train_loader(config, datasets.train, seed=0), 1)[0]
  assert batch["image"].shape == (16, 32, 32, 3) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32
  low = (0 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
  high = (1 - np.array(CIFAR_MEAN)) / np.array(CIFAR_STD)
  flat = batch["image"].reshape(-1, 3)
  assert np.all(flat >= low - 1e-5) and np.all(flat <= high + 1e-5)
  assert np.all(flat.min(0) < 0) and np.all(flat.max(0) > 1) and abs(flat.mean()) < 0.6
  # Zero padding shows up as exactly the normalized 0 value in some image's border.
  assert np.any(np.all(np.isclose(batch["image"][:, :, 0], low, atol=1e-5), axis=(1, 2)))


def test_cifar10_same_seed_same_batches_other_seed_other(cifar10):
  config, datasets = cifar10
  first = take(input_pipeline.create_train_loader(config, datasets.train, seed=3), 2)
  again = take(input_pipeline.create_train_loader(config, datasets.train, seed=3), 2)
  other = take(input_pipeline.create_train_loader(config, datasets.train, seed=4), 2)
  assert_same_batches(first, again)
  assert not np.array_equal(first[0]["label"], other[0]["label"])
  assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_cifar10_restored_iterator_continues_with_the_next_batch(cifar10):
  config, datasets = cifar10
  iterator = iter(input_pipeline.create_train_loader(config, datasets.train, seed=0))
  take(iterator, 2)
  state = iterator.get_state()
  expected = take(iterator, 2)
  restored = iter(input_pipeline.create_train_loader(config, datasets.train, seed=0))
  restored.set_state(state)
  assert_same_batches(take(restored, 2), expected)


def test_cifar10_eval_pass_is_ordered_and_unaugmented(cifar10):
  config, datasets = cifar10
  batch = next(input_pipeline.eval_batches(config, datasets.eval))
  np.testing.assert_array_equal(batch["label"], datasets.eval.labels[:16])
  raw = datasets.eval[3]["image"].astype(np.float32) / 255
  np.testing.assert_allclose(batch["image"][3], (raw - CIFAR_MEAN) / CIFAR_STD, atol=1e-5)
  assert batch["mask"].all()


# --- loaders on a small written folder ---------------------------------------------------------

@pytest.fixture
def small_folder(tmp_path):
  return write_folder(tmp_path / "data")


@pytest.mark.parametrize("augment", ["none", "cifar", "imagenet"])
def test_restore_across_epochs_for_every_augmentation(small_folder, augment):
  config = make_config(data_dir=small_folder, augment=augment, batch_size=5, image_size=16)
  datasets = input_pipeline.create_datasets(config)
  iterator = iter(input_pipeline.create_train_loader(config, datasets.train, seed=1))
  take(iterator, 3)  # 12 records: the fourth batch crosses into the second epoch
  state = iterator.get_state()
  expected = take(iterator, 3)
  assert expected[0]["image"].shape == (5, 16, 16, 3)
  restored = iter(input_pipeline.create_train_loader(config, datasets.train, seed=1))
  restored.set_state(state)
  assert_same_batches(take(restored, 3), expected)


@pytest.mark.slow
def test_worker_process_gives_the_same_batches_and_restores(small_folder):
  # No flags.FLAGS(...) here: the library marks absl flags parsed for grain's workers.
  # (With several workers each batches its own share of the records, so batches depend on the
  # worker count, by grain's design; one worker sees them all in order.)
  config = make_config(data_dir=small_folder, batch_size=4, image_size=16)
  datasets = input_pipeline.create_datasets(config)
  in_process = take(input_pipeline.create_train_loader(config, datasets.train, seed=2), 5)
  config.num_workers = 1
  iterator = iter(input_pipeline.create_train_loader(config, datasets.train, seed=2))
  with_worker = take(iterator, 3)
  state = iterator.get_state()
  with_worker += take(iterator, 2)
  assert_same_batches(with_worker, in_process)
  restored = iter(input_pipeline.create_train_loader(config, datasets.train, seed=2))
  restored.set_state(state)
  assert_same_batches(take(restored, 2), in_process[3:])


def test_eval_batches_pad_and_mask(small_folder):
  config = make_config(data_dir=small_folder, augment="imagenet", eval_batch_size=5,
                       image_size=24)
  datasets = input_pipeline.create_datasets(config)
  batches = list(input_pipeline.eval_batches(config, datasets.eval))
  assert [b["image"].shape for b in batches] == [(5, 24, 24, 3)] * 3
  assert [int(b["mask"].sum()) for b in batches] == [5, 5, 2]
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:12],
                                datasets.eval.labels)
  assert np.all(batches[-1]["image"][2:] == 0)


def test_each_host_reads_its_own_shard(small_folder, monkeypatch):
  config = make_config(data_dir=small_folder, augment="none", eval_batch_size=4, image_size=8)
  datasets = input_pipeline.create_datasets(config)
  labels = []
  for host in (0, 1):
    monkeypatch.setattr(input_pipeline.jax, "process_count", lambda: 2)
    monkeypatch.setattr(input_pipeline.jax, "process_index", lambda host=host: host)
    batches = list(input_pipeline.eval_batches(config, datasets.eval))
    assert batches[0]["image"].shape[0] == 2  # the global batch of 4 split over 2 hosts
    labels.append(np.concatenate([b["label"][b["mask"]] for b in batches]))
  np.testing.assert_array_equal(np.concatenate(labels), datasets.eval.labels)
  with pytest.raises(ValueError, match="not divisible by the 2 processes"):
    input_pipeline.local_batch_size(5)


def test_cache_decoded_images_gives_the_same_batches(small_folder):
  config = make_config(data_dir=small_folder, batch_size=4, image_size=40)
  folder = input_pipeline.create_datasets(config)
  config.cache_decoded_images = True
  cached = input_pipeline.create_datasets(config)
  assert type(cached.train).__name__ == "ArraySource" and len(cached.train) == 12
  assert_same_batches(take(input_pipeline.create_train_loader(config, folder.train, 5), 3),
                      take(input_pipeline.create_train_loader(config, cached.train, 5), 3))


def test_restore_into_fresh_sources_moved_or_cached(small_folder, tmp_path):
  # grain checks the restored state against repr(source): it must not hold object addresses
  # or mount paths, and caching must not change it.
  config = make_config(data_dir=small_folder, batch_size=4, image_size=40)
  iterator = iter(input_pipeline.create_train_loader(
      config, input_pipeline.create_datasets(config).train, seed=0))
  take(iterator, 2)
  state = iterator.get_state()
  expected = take(iterator, 2)
  moved = str(tmp_path / "moved")
  os.rename(small_folder, moved)
  for cache in (False, True):
    config = make_config(data_dir=moved, batch_size=4, image_size=40, cache_decoded_images=cache)
    restored = iter(input_pipeline.create_train_loader(
        config, input_pipeline.create_datasets(config).train, seed=0))
    restored.set_state(state)
    assert_same_batches(take(restored, 2), expected)
  config = make_config(dataset="digits", augment="none", image_size=8, channels=1,
                       mean=(0.305,), std=(0.376,))
  iterator = iter(input_pipeline.create_train_loader(
      config, input_pipeline.create_datasets(config).train, seed=0))
  take(iterator, 1)
  restored = iter(input_pipeline.create_train_loader(
      config, input_pipeline.create_datasets(config).train, seed=0))
  restored.set_state(iterator.get_state())
  assert_same_batches(take(restored, 1), take(iterator, 1))


def test_cache_needs_one_image_shape(tmp_path):
  root = write_folder(tmp_path / "data")
  Image.new("RGB", (7, 7)).save(tmp_path / "data" / "train" / "class1" / "odd.png")
  config = make_config(data_dir=root, cache_decoded_images=True)
  with pytest.raises(ValueError, match="odd.png.*cache_decoded_images=False"):
    input_pipeline.create_datasets(config)


def test_unknown_dataset_and_augment_are_errors():
  with pytest.raises(ValueError, match="unknown dataset 'cifar'"):
    input_pipeline.create_datasets(make_config(dataset="cifar"))
  with pytest.raises(ValueError, match="unknown augment 'autoaugment'"):
    input_pipeline.create_datasets(make_config(dataset="digits", augment="autoaugment"))
  with pytest.raises(ValueError, match="channels must be 1"):
    input_pipeline.create_datasets(make_config(channels=4))
  with pytest.raises(ValueError, match="config.mean has 3 values for images of 1 channels"):
    input_pipeline.create_datasets(make_config(channels=1))


def test_digits_still_work():
  config = make_config(dataset="digits", augment="none", image_size=8, channels=1,
                       mean=(0.305,), std=(0.376,))
  datasets = input_pipeline.create_datasets(config)
  batch = take(input_pipeline.create_train_loader(config, datasets.train, 0), 1)[0]
  assert batch["image"].shape == (16, 8, 8, 1) and batch["image"].dtype == np.float32


def test_auto_picks_folder_or_tfds(small_folder, tmp_path):
  datasets = input_pipeline.create_datasets(make_config(dataset="auto", data_dir=small_folder))
  assert datasets.info.num_train == 12
  with pytest.raises(FileNotFoundError, match="does not exist"):
    input_pipeline.create_datasets(make_config(dataset="auto", data_dir=str(tmp_path / "no")))


# --- TFDS --------------------------------------------------------------------------------------

def test_tfds_cifar10_on_mock_data():
  import tensorflow_datasets as tfds

  config = make_config(dataset="tfds", tfds_name="cifar10", batch_size=4, eval_batch_size=4)
  with tfds.testing.mock_data(num_examples=10):
    datasets = input_pipeline.create_datasets(config)
    record = datasets.train[3]
  info = datasets.info
  assert (info.num_classes, info.num_train, info.num_eval) == (10, 10, 10)
  assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
  assert 0 <= record["label"] < 10
  # The mock's source pickles and keeps working outside the context (as grain's workers need).
  first = take(input_pipeline.create_train_loader(config, datasets.train, seed=0), 3)
  again = take(input_pipeline.create_train_loader(config, datasets.train, seed=0), 3)
  assert_same_batches(first, again)
  assert first[0]["image"].shape == (4, 32, 32, 3)
  evaluated = input_pipeline.eval_batches(config, datasets.eval)
  assert [int(b["mask"].sum()) for b in evaluated] == [4, 4, 2]


def test_tfds_variable_size_and_greyscale_on_mock_data():
  import tensorflow_datasets as tfds

  config = make_config(dataset="tfds", tfds_name="imagenet2012", augment="imagenet",
                       image_size=24, batch_size=3, eval_batch_size=3)
  with tfds.testing.mock_data(num_examples=6):
    datasets = input_pipeline.create_datasets(config)
    grey = input_pipeline.create_datasets(make_config(dataset="tfds", tfds_name="mnist",
                                                      image_size=28))
    assert datasets.info.num_classes == 1000
    shapes = {datasets.train[i]["image"].shape for i in range(6)}
    assert len(shapes) > 1  # the mock's images vary in size, like ImageNet's
    batch = take(input_pipeline.create_train_loader(config, datasets.train, 0), 1)[0]
    assert batch["image"].shape == (3, 24, 24, 3)
    assert next(input_pipeline.eval_batches(config, datasets.eval))["image"].shape == (3, 24, 24, 3)
    assert grey.train[0]["image"].shape == (28, 28, 3)  # mnist's 1 channel -> the 3 asked for


def test_tfds_not_prepared_says_the_command(tmp_path):
  from bmd_jax.data import tfds_source

  with pytest.raises(tfds_source.DatasetNotPreparedError) as info:
    tfds_source.tfds_sources("cifar10:3.0.2", data_dir=str(tmp_path))
  message = str(info.value)
  assert "not prepared" in message and str(tmp_path) in message
  assert "pip install tensorflow importlib_resources" in message
  assert (f"tfds.builder('cifar10:3.0.2', data_dir='{tmp_path}')"
          ".download_and_prepare(file_format='array_record')") in message
  with pytest.raises(tfds_source.DatasetNotPreparedError) as info:
    input_pipeline.create_datasets(make_config(dataset="tfds", tfds_name="imagenet2012",
                                               data_dir=str(tmp_path)))
  message = str(info.value)
  assert f"{tmp_path}/downloads/manual/" in message
  assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
  # 'auto' with a data_dir that has no train/ folder means TFDS there.
  with pytest.raises(tfds_source.DatasetNotPreparedError):
    input_pipeline.create_datasets(make_config(dataset="auto", data_dir=str(tmp_path)))


def test_tfds_unknown_name_or_version():
  from bmd_jax.data import tfds_source

  with pytest.raises(ValueError, match="no data set named 'cifar_ten'"):
    tfds_source.tfds_sources("cifar_ten")
  with pytest.raises(ValueError, match="9.9.9"):
    tfds_source.tfds_sources("cifar10:9.9.9")


# --- transforms --------------------------------------------------------------------------------

def test_cifar_augment_is_a_padded_crop_or_its_flip():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, (64, 8, 8, 3), dtype=np.uint8)  # no zeros: padding shows
  out = transforms.CifarAugment(8, padding=2).random_map(
      {"image": images, "label": np.arange(64)}, np.random.default_rng(1))["image"]
  assert out.shape == images.shape and out.dtype == np.uint8
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  seen = set()
  for n in range(64):
    matches = [(t, l, f) for t in range(5) for l in range(5) for f in (False, True)
               if np.array_equal(out[n], (padded[n, t:t + 8, l:l + 8])[:, ::-1 if f else 1])]
    assert matches, n
    seen.update(matches)
  assert len({m[2] for m in seen}) == 2 and len({m[:2] for m in seen}) > 10


def test_imagenet_augment_shapes_boxes_and_lighting():
  rng = np.random.default_rng(0)
  for _ in range(200):
    left, top, right, bottom = transforms.random_resized_box(375, 500, rng)
    area = (right - left) * (bottom - top) / (375 * 500)
    assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
    aspect = (right - left) / (bottom - top)
    assert 0.08 - 0.01 <= area <= 1.0 and 3 / 4 - 0.02 <= aspect <= 4 / 3 + 0.02
  offsets = np.array([transforms.lighting_offset(rng, 0.1) for _ in range(4000)])
  np.testing.assert_allclose(offsets.mean(0), 0, atol=2e-3)
  scaled = transforms.LIGHTING_EIGVEC * transforms.LIGHTING_EIGVAL * 0.1
  expected_std = np.sqrt((scaled ** 2).sum(1))
  np.testing.assert_allclose(offsets.std(0), expected_std, rtol=0.1)
  grey = np.full((375, 500, 3), 128, np.uint8)
  out = transforms.ImagenetAugment(32).random_map({"image": grey, "label": 1}, rng)["image"]
  assert out.shape == (32, 32, 3) and out.dtype == np.float32
  assert np.allclose(out - out[0, 0], 0, atol=1e-6)  # one offset for the whole image


def test_eval_resize_and_center_crop():
  image = np.zeros((300, 400, 3), np.uint8)
  image[:, 200:] = 255  # right half white
  out = transforms.ResizeCenterCrop(224, 256).map({"image": image, "label": 0})["image"]
  assert out.shape == (224, 224, 3)
  assert np.all(out[:, :100] == 0) and np.all(out[:, 124:] == 255)
  small = np.ones((32, 32, 3), np.uint8)
  record = {"image": small, "label": 0}
  assert transforms.ResizeCenterCrop(32).map(record) is record  # already the size: untouched
