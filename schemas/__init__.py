"""The data contracts of each dataset, as files: ``schemas/<name>/schema.pbtxt`` and
``schemas/<name>/rules.toml``.

``schema.pbtxt`` is a tensorflow_metadata ``Schema`` text proto (the TFX convention):
every column of the dataset (raw features, the label and the row key) with its type,
presence (``min_fraction: 1`` = required) and domain. ``rules.toml`` holds what the proto
cannot say (allowed characters, the policy for unseen categories, key and label columns).

This package holds only data (read as package data through importlib.resources); the
code that reads and applies a contract is :mod:`batch.contract`.
"""
