"""Data contracts: the code that loads and applies a dataset's schema.pbtxt and rules.toml (the files live in schemas/<name>/)."""
