"""Symbolic links in image folders: a loop or a link into another class never changes the data
set, and what is skipped is said (issue 15, item 4)."""

import os

import numpy as np

from bmd_jax.data import image_folder
from tests.test_image_folder import make_folder, write_image


def _labels_by_class(source):
  return {name: int(np.sum(source.labels == i)) for i, name in enumerate(source.classes)}


def test_a_link_to_its_own_folder_adds_nothing(tmp_path, caplog):
  root = make_folder(tmp_path)
  os.symlink(".", tmp_path / "train" / "cat" / "loop")
  train, _ = image_folder.image_folder_sources(root)
  assert _labels_by_class(train) == {"cat": 2, "dog": 2}
  assert "loop" in caplog.text and "skipp" in caplog.text


def test_a_link_to_the_split_labels_nothing_twice(tmp_path, caplog):
  root = make_folder(tmp_path)
  os.symlink("..", tmp_path / "train" / "cat" / "up")
  train, _ = image_folder.image_folder_sources(root)
  assert _labels_by_class(train) == {"cat": 2, "dog": 2}
  assert "up" in caplog.text


def test_a_link_to_a_folder_outside_the_split_is_followed_once(tmp_path):
  root = make_folder(tmp_path / "data")
  extra = tmp_path / "more_cats"
  write_image(str(extra / "x.png"))
  os.symlink(extra, tmp_path / "data" / "train" / "cat" / "more")
  os.symlink(extra, tmp_path / "data" / "train" / "cat" / "same_again")
  train, _ = image_folder.image_folder_sources(root)
  assert _labels_by_class(train) == {"cat": 3, "dog": 2}
