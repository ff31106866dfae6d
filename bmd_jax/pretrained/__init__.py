"""Published runs in one line: ``model, variables = bmd_jax.pretrained.load("digits_small_cnn")``.

``list()`` names every published run with the top-1 its own evaluation recorded; ``load(name)``
returns the Flax model and its float32 variables ({'params', 'batch_stats'}, the binary
layers' latent weights included); ``load_packed(name)`` the packed +-1 export of the same
weights (bmd_jax.tools.export's file, read by export.load). Every file is checked against the
sha256 its record holds before it is read. The files are package data (published/), so a wheel
install has them; ``python -m bmd_jax.pretrained.publish`` adds a finished run
(docs/PRETRAINED.md).

May import: core, models, data, infra, tools, xla_cpu. Never: training.
"""

from bmd_jax.pretrained.catalog import (PretrainedFileError, UnknownRunError, load,
                                        load_packed, names, record)
from bmd_jax.pretrained.catalog import published_runs as list  # pylint: disable=redefined-builtin

__all__ = ["PretrainedFileError", "UnknownRunError", "list", "load", "load_packed", "names",
           "record"]
