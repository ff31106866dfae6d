"""One path type for every file the project reads or writes: etils.epath.

A workdir, a checkpoint folder, an export or a data folder may be a local path or a URL
(``gs://bucket/runs/x``, ``s3://...``); epath.Path handles both, and Orbax takes it as it is.
os.path would treat ``gs://b/x`` as a local folder named ``gs:``.
"""

from __future__ import annotations

import os
import re

from etils import epath

PathLike = str | os.PathLike


def is_url(path: PathLike) -> bool:
  return "://" in os.fspath(path)


def resolve(path: PathLike) -> epath.Path:
  """`path` as an epath.Path: a URL as it is, a local path made absolute (as Orbax wants)."""
  text = os.fspath(path)
  return epath.Path(text if is_url(text) else os.path.abspath(text))


def blocking_file(path: epath.Path) -> epath.Path | None:
  """The file standing where `path` or one of its ancestors should be a folder, if any. None
  for a URL: an object store holds ``x`` and ``x/y`` side by side, so nothing blocks there."""
  if is_url(path):
    return None
  probe = path
  while not probe.exists():
    if probe.parent == probe:
      return None
    probe = probe.parent
  return None if probe.is_dir() else probe


def os_error(error: BaseException) -> tuple[int | None, str | None]:
  """(errno, path) of an OSError, or of TensorStore's I/O error as Orbax raises it: a ValueError
  ending in [os_error_code='28'] that quotes the path. (None, None) for any other error."""
  if isinstance(error, OSError):
    return error.errno, error.filename
  code = re.search(r"\[os_error_code='(\d+)'\]", str(error))
  if code is None:
    return None, None
  where = re.search(r'"((?:/|\w+://)[^"]+)"', str(error))
  return int(code[1]), where[1] if where else None
