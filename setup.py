"""Package list of fptq; everything else is declared in pyproject.toml.

The conformance suite lives at the top of the repository (``conformance/``) and
is installed as ``fptq.conformance`` (pyproject.toml maps the directory with
``package-dir``), so ``pip install fptq`` ships it with its known-answer
vectors. A static ``packages.find`` cannot name a package whose directory lies
outside ``fptq/``, hence this list: every directory under ``fptq/`` (data
directories such as ``backends/cuda`` included, as namespace packages holding
package data) plus the suite and its ``vectors/``.
"""

from setuptools import find_namespace_packages, setup

setup(packages=[*find_namespace_packages(include=["fptq", "fptq.*"], exclude=["*.__pycache__"]),
                "fptq.conformance", "fptq.conformance.vectors"])
