"""The edges every command line shares: its flags parsed, and one error boundary.

``python -m bmd_jax.main`` and the tools (analyze, summary, convert, export) start with
``cli.run(main)`` in place of absl's ``app.run(main)``. Then:

- a user's mistake (a bad flag or config value, a config file that does not parse, a missing
  path or data set, a damaged file, a full disk, a read-only folder, a cloud path without its
  package) is one line on stderr naming it and the fix;
- a stop on purpose (SIGTERM, Ctrl-C) is one line saying what was kept;
- anything else is a bug, and keeps its traceback on stderr.

The traceback of an error, user's or bug, is also appended to ``<workdir>/error.log`` when the
command has a --workdir that is an existing local folder; the one line names that file.

Exit statuses: 0 done; 1 an error; 2 a bad command line (a flag, a config field or config
file); 75 (EX_TEMPFAIL) stopped by SIGTERM once its checkpoint is written, so a scheduler can
requeue the same command; 130 (128 + SIGINT, as a shell reports it) stopped by Ctrl-C.
"""

from __future__ import annotations

import errno
import functools
import gc
import os
import re
import socket
import sys
import time
import traceback
import warnings

from absl import app, flags

from bmd_jax.infra import config_files, paths

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130

# Errors whose message names the problem and the fix, as "module.Class" (a subclass counts):
# the tools share this list without importing the training modules that define some of them.
# Add a class in one line.
USER_ERRORS = frozenset({
    "bmd_jax.infra.checkpoint.CheckpointDamagedError",
    "bmd_jax.infra.checkpoint.CheckpointWriteError",
    "bmd_jax.infra.checkpoint.ConfigChangedError",
    "bmd_jax.infra.checkpoint.NoSuchCheckpointError",
    "bmd_jax.core.components.ComponentError",
    "bmd_jax.infra.config_checks.ConfigValueError",
    "bmd_jax.tools.convert.StateDictError",
    "bmd_jax.data.image_folder.ImageFolderError",
    "bmd_jax.data.image_folder.NonFiniteImageError",
    "bmd_jax.data.image_folder.UnreadableImageError",
    "bmd_jax.data.tfds_source.DatasetNotPreparedError",
    "bmd_jax.pretrained.catalog.PretrainedFileError",
    "bmd_jax.pretrained.catalog.UnknownRunError",
    "bmd_jax.tools.export.ExportFileError",
    "bmd_jax.tools.export.NotExportableError",
    "bmd_jax.training.train.NonFiniteLossError",
    "bmd_jax.training.workdir_lock.WorkdirLockedError",
    "bmd_jax.training.workdir_lock.WorkdirLostError",
    "builtins.FileNotFoundError",  # a path given wrong: the message names it
    "builtins.IsADirectoryError",
    "builtins.NotADirectoryError",
})

# Stops on purpose, with their exit statuses; their message says what was kept.
STOPS = {
    "bmd_jax.training.train.Preempted": EXIT_PREEMPTED,
    "builtins.KeyboardInterrupt": EXIT_INTERRUPTED,
}

# OSErrors that are the machine's state, not the program's: found anywhere in an error's
# chain, because Orbax and fsspec wrap them in errors of their own.
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def run(main, interrupted: str = "interrupted (Ctrl-C)") -> None:
  """absl's app.run(main) inside the error boundary; `interrupted` is the line for Ctrl-C
  when nothing says more (a KeyboardInterrupt has no message)."""
  app.run(functools.partial(_guarded, main, interrupted), flags_parser=parse_flags)


def _guarded(main, interrupted: str, argv):
  try:
    return main(argv)
  except app.UsageError as e:  # absl would print the whole module docstring with it
    _exit(EXIT_USAGE, f"{e}; --helpshort lists the flags")
  except SystemExit:
    raise
  except BaseException as e:  # pylint: disable=broad-exception-caught
    status, message = _report(e, interrupted)
  # The error's frames held the input pipeline's worker processes and their shared memory:
  # released here, they stop cleanly instead of warning of leaks at exit. A save that Ctrl-C
  # cut off before it began leaves Orbax's coroutine unawaited: the line below says which
  # checkpoint is kept, so Python's warning about that coroutine would only add noise.
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
    gc.collect()
  _exit(status, message)


def _report(error: BaseException, interrupted: str) -> tuple[int, str | None]:
  """(exit status, the line to print last): a bug's traceback is printed here."""
  found = classify(error)
  log = _append_to_log(error) if found is None or found[0] == EXIT_ERROR else None
  if found is None:
    traceback.print_exception(error)
    return EXIT_ERROR, f"this traceback is also in {log}" if log else None
  status, message = found
  return status, (message or interrupted) + (f" (traceback in {log})" if log else "")


def classify(error: BaseException) -> tuple[int, str] | None:
  """(exit status, one line) for a stop or a user's error; None for a bug."""
  names = _class_names(error)
  for name, status in STOPS.items():
    if name in names:
      return status, _one_line(str(error))
  if names & USER_ERRORS:
    return EXIT_ERROR, _one_line(str(error))
  for cause in _chain(error):
    message = _machine_state(cause)
    if message:
      return EXIT_ERROR, message
  if isinstance(error, ImportError) and not (error.name or "").startswith("bmd_jax"):
    return EXIT_ERROR, _one_line(str(error))  # a package this command needs, named
  return None


def _class_names(error: BaseException) -> set[str]:
  # python -m bmd_jax.tools.convert defines convert's classes in __main__: named by their module
  main = getattr(sys.modules["__main__"].__spec__, "name", "__main__")
  return {f"{main if c.__module__ == '__main__' else c.__module__}.{c.__qualname__}"
          for c in type(error).__mro__}


def _chain(error: BaseException):
  """`error` and its causes, as Python prints them."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


def _machine_state(error: BaseException) -> str | None:
  """One line for a full disk, a folder that cannot be written or a missing package."""
  if isinstance(error, ModuleNotFoundError) and not (error.name or "bmd_jax").startswith(
      "bmd_jax"):
    return _missing_package(error.name)
  code, where = paths.os_error(error)
  where = where or "a file"
  if code in _DISK_FULL:
    return (f"could not write {where}: the disk is full ({os.strerror(code)}). Free space, or "
            "write elsewhere (another --workdir or --out), and run the same command again")
  if code in _NOT_WRITABLE:
    return (f"cannot write {where}: {os.strerror(code)}. Give a folder this user can write "
            "(another --workdir or --out), or make it writable")
  return None


def _missing_package(name: str) -> str:
  # fsspec imports a cloud path's filesystem (gcsfs, s3fs) only when the path is first used
  urls = [a.partition("=")[2] for a in sys.argv[1:] if "://" in a]
  what = " and ".join(urls) if urls else "this command"
  return (f"{what} needs the Python package {name}, which is not installed: pip install "
          f"{name}" + ("; or give a local path" if urls else ""))


def _one_line(text: str) -> str:
  return re.sub(r"\s*\n\s*", " ", text.strip())


def _exit(status: int, message: str | None):
  if message:
    print(f"{_program()}: {message}", file=sys.stderr)
  sys.exit(status)


def _program() -> str:
  """The module run with -m (bmd_jax.main, bmd_jax.tools.export, ...)."""
  spec = getattr(sys.modules.get("__main__"), "__spec__", None)
  if spec is not None and spec.name.startswith("bmd_jax."):
    return spec.name
  return "bmd_jax." + os.path.splitext(os.path.basename(sys.argv[0]))[0]


def _append_to_log(error: BaseException) -> str | None:
  """Appends `error`'s traceback to <workdir>/error.log; its path, or None when the command
  has no local workdir or the file cannot be written (a full or read-only disk)."""
  workdir = _workdir()
  if workdir is None:
    return None
  path = os.path.join(workdir, "error.log")
  try:
    with open(path, "a", encoding="utf-8") as f:
      f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {socket.gethostname()} pid "
              f"{os.getpid()}: {' '.join(sys.argv)}\n")
      traceback.print_exception(error, file=f)
  except OSError:
    return None
  return path


def _workdir() -> str | None:
  """The command's --workdir (analyze's when it is given once), if an existing local folder."""
  if "workdir" not in flags.FLAGS:
    return None
  value = flags.FLAGS["workdir"].value
  if isinstance(value, (list, tuple)):
    value = value[0] if len(value) == 1 else None
  if not value or paths.is_url(value) or not os.path.isdir(value):
    return None
  return value


# --- flags ---------------------------------------------------------------------------------

def parse_flags(argv):
  """absl's flag parsing, with --config a path or a recipe's name, and a bad flag, an
  unknown --config.FIELD or a config file that does not parse named in one line (absl and
  ml_collections raise them from deep inside the parser)."""
  argv = _joined_config_values(argv)
  argv = [_config_found(a) if a.startswith(("--config=", "-config=")) else a for a in argv]
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _exit(EXIT_USAGE, f"{_one_line(str(e))}; --helpshort lists the flags")
  except (AttributeError, KeyError) as e:
    _exit(EXIT_USAGE, _unknown_field(str(e).strip("\"'"), argv))
  except SyntaxError as e:
    _exit(EXIT_USAGE, f"the config file {e.filename} does not parse: line {e.lineno}: {e.msg}: "
          f"{(e.text or '').strip()!r}. Fix it and run the same command again")


def _joined_config_values(argv):
  """`--config NAME` (absl's other spelling) as `--config=NAME`, so both find recipes."""
  joined, rest = [], list(argv)
  while rest:
    arg = rest.pop(0)
    if arg in ("--config", "-config") and rest:
      arg = f"{arg}={rest.pop(0)}"
    joined.append(arg)
  return joined


def _config_found(argument: str) -> str:
  """--config=NAME[:options] with NAME, a path or a recipe's short name, made the file's path
  (config_files.resolve), so ml_collections loads a recipe from any working directory."""
  name, value = argument.split("=", 1)
  path, colon, options = value.partition(":")
  try:
    return f"{name}={config_files.resolve(path)}{colon}{options}"
  except FileNotFoundError as e:
    _exit(EXIT_USAGE, f"{name}: {e}")


def _unknown_field(field: str, argv) -> str:
  given = [a for a in argv[1:] if a.startswith("--config.") and field in a]
  where = given[0] if given else f"--config...{field}"
  path = where.removeprefix("--config.").partition("=")[0]
  renamed = config_files.renamed_loss_field(path)
  fix = (f"loss options are one block per term since 2026-11-28: --config.{renamed}"
         if renamed else "Check its spelling: --print_config lists every field, "
         "bmd_jax/configs/default.py explains them")
  return f"{where}: the config has no field {field!r}. {fix}"
