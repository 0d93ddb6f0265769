"""Package list of fptq; everything else is declared in pyproject.toml.

The conformance suite lives at the top of the repository (``conformance/``) and
is installed as ``fptq.conformance`` (pyproject.toml maps the directory with
``package-dir``), so ``pip install fptq`` ships it with its known-answer
vectors. A static ``packages.find`` cannot name a package whose directory lies
outside ``fptq/``, hence this list: every package under ``fptq/`` plus the suite.
"""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["fptq", "fptq.*"]), "fptq.conformance"])
