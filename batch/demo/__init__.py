"""The embedded demo: where it keeps its data, models and keys, and its data generator (the
loans dataset of schemas/loans). Training the demo model is training.trainer."""
