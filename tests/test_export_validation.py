"""export.load refuses a file that disagrees with its manifest, naming the file and the key
(issue 15, item 5), including an array whose content differs from its recorded hash (issue 29)."""

import json
import logging
import os

import numpy as np
import pytest

from bmd_jax.tools import export


@pytest.fixture(scope="module")
def exported_file(digits_run, tmp_path_factory):
  _, workdir = digits_run
  out = str(tmp_path_factory.mktemp("export") / "digits.npz")
  export.export(workdir, out)
  return out


def _rewrite(source, target, change):
  with np.load(source) as data:
    arrays = {k: data[k] for k in data.files}
  change(arrays)
  np.savez(target, **arrays)
  return str(target)


def _first_scale_key(arrays):
  return sorted(k for k in arrays if k.startswith("packed/") and k.endswith("/scale"))[0]


def test_the_export_itself_loads(exported_file):
  assert export.load(exported_file).manifest["format"] == export.FORMAT


def test_an_array_cut_short_is_refused(exported_file, tmp_path):
  key = []

  def cut(arrays):
    key.append(_first_scale_key(arrays))
    arrays[key[0]] = arrays[key[0]][:1]

  path = _rewrite(exported_file, tmp_path / "cut.npz", cut)
  with pytest.raises(export.ExportFileError, match="shape") as error:
    export.load(path)
  assert path in str(error.value) and key[0] in str(error.value)


def test_an_array_of_another_dtype_is_refused(exported_file, tmp_path):
  def retype(arrays):
    key = next(k for k in arrays if k.endswith("/words"))
    arrays[key] = arrays[key].astype(np.int64)

  path = _rewrite(exported_file, tmp_path / "retyped.npz", retype)
  with pytest.raises(export.ExportFileError, match="dtype.*words|words.*dtype"):
    export.load(path)


def test_a_missing_array_is_named(exported_file, tmp_path):
  removed = []

  def drop(arrays):
    removed.append(next(k for k in sorted(arrays) if k.startswith("params/")))
    del arrays[removed[0]]

  path = _rewrite(exported_file, tmp_path / "missing.npz", drop)
  with pytest.raises(export.ExportFileError, match="lacks") as error:
    export.load(path)
  assert removed[0] in str(error.value) and path in str(error.value)


@pytest.mark.parametrize("manifest", [None, "not json {", json.dumps({"format": "other"}),
                                      json.dumps({"format": export.FORMAT})])
def test_a_bad_manifest_is_named(exported_file, tmp_path, manifest):
  def replace(arrays):
    if manifest is None:
      del arrays["manifest"]
    else:
      arrays["manifest"] = np.array(manifest)

  path = _rewrite(exported_file, tmp_path / "manifest.npz", replace)
  with pytest.raises(export.ExportFileError, match="manifest") as error:
    export.load(path)
  assert path in str(error.value)


@pytest.mark.parametrize("keep", [0, 0.5, 0.97])
def test_an_empty_or_truncated_file_is_named(exported_file, tmp_path, keep):
  data = open(exported_file, "rb").read()
  path = str(tmp_path / "truncated.npz")
  with open(path, "wb") as f:
    f.write(data[:int(len(data) * keep)])
  with pytest.raises(export.ExportFileError) as error:
    export.load(path)
  assert path in str(error.value)


def test_an_array_edited_with_its_shape_kept_is_refused_naming_it(exported_file, tmp_path):
  # The edit (issue 29): the shapes and dtypes still agree with the manifest.
  arrays = dict(np.load(exported_file))
  arrays["packed/conv0/shift"] += 5
  path = str(tmp_path / "edited.npz")
  np.savez(path, **arrays)
  with pytest.raises(export.ExportFileError) as error:
    export.load(path)
  message = str(error.value)
  assert "packed/conv0/shift" in message and path in message and "\n" not in message


def _without_hashes(arrays, keep=0):
  manifest = json.loads(str(arrays["manifest"]))
  for want in list(manifest["arrays"].values())[keep:]:
    del want["sha256"]
  arrays["manifest"] = np.array(json.dumps(manifest))


def test_an_export_from_before_the_hashes_loads_with_a_warning(exported_file, tmp_path, caplog):
  path = _rewrite(exported_file, tmp_path / "old.npz", _without_hashes)
  with caplog.at_level(logging.WARNING, "bmd_jax"):
    export.load(path)
  assert "no content hashes" in caplog.text and path in caplog.text


def test_hashes_removed_from_some_arrays_are_refused(exported_file, tmp_path):
  path = _rewrite(exported_file, tmp_path / "some.npz", lambda a: _without_hashes(a, keep=1))
  with pytest.raises(export.ExportFileError, match="no sha256 for array"):
    export.load(path)


def test_the_normalization_an_export_states_is_the_datasets_scale():
  import json
  from bmd_jax.tools import export as export_tool
  for dataset, divisor in (("digits", "16"), ("cifar10", "255")):
    manifest = {"config": json.dumps({"dataset": dataset, "mean": [0.0], "std": [1.0]})}
    assert f"/ {divisor} " in export_tool.normalization(manifest)["scale"]
