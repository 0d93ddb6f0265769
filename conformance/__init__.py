"""The fptq conformance suite: ``pytest --pyargs fptq.conformance --backend NAME`` (see README.md).

In a checkout it lives at the top of the repository (``pytest conformance/
--backend NAME``); the wheel installs the same files as ``fptq.conformance``.
A package so that its helper modules (``pieces``, ``hypothesis_helpers``,
``pytest_helpers``) have names that cannot collide with a project's own
``tests/`` helpers.
"""

#: The fptq version whose ``fptq.spec`` this suite (tests and known-answer vectors) is written for; the
#: plugin refuses to run it against another (``tests/test_conformance_plugin.py`` keeps it equal to
#: ``fptq.__version__`` in the repository).
SUITE_VERSION = "0.1.0"
