"""tngraph's first-party strategy plugins (optimizers, distillers).

They register through the same entry-point groups as third-party plugins
(``tngraph.optimizers``, ``tngraph.distillers``; see ``pyproject.toml``), so nothing here is
special: a package of your own can add strategies the same way (``docs/plugins.md``).
"""
