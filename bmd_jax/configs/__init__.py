"""The recipes: config files that ship inside the package, so a wheel install has them.

Named on the command line by their file's stem, from any working directory:
``python -m bmd_jax.main --config=cifar10``, and ``--config=imagenet_bdbnn:diffkurt`` passes
``diffkurt`` to the file's ``get_config``; a path to a file of your own works the same way and
wins over a recipe's name (bmd_jax/infra/config_files.py resolves them; ``--help`` lists them).
Each file is loaded by path; a variant builds on its base with ``load_sibling``. They may also
be imported (``from bmd_jax.configs import default``). A file whose name starts with ``_`` is
a helper the recipes share, not a recipe.
"""
