"""The fptq conformance suite: run ``pytest conformance/ --backend NAME`` (see README.md).

A package so that its helper modules (``conformance.pieces``,
``conformance.hypothesis_helpers``, ``conformance.pytest_helpers``) have
names that cannot collide with a project's own ``tests/`` helpers.
"""
