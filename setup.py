from setuptools import setup

# Dataflow workers install batchscore from this shim: --setup_file=./setup.py makes Beam
# build an sdist of the project (metadata and dependencies come from pyproject.toml).
setup()
