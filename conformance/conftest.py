"""pytest setup of the conformance suite: the ``backend`` fixture; everything else is :mod:`.plugin`.

The plugin (options, backend selection, Hypothesis profiles, report header,
``--xfails``, the version check) is normally loaded by pytest through fptq's
``pytest11`` entry point. Where it is not (fptq not installed and the suite
run from a checkout on ``PYTHONPATH``, or ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``
set), this conftest loads it.
"""

from __future__ import annotations

import sys

import pytest

from .pytest_helpers import remember_backend_name

if "fptq.conformance.plugin" not in sys.modules:  # not autoloaded: load it from this suite
    pytest_plugins = [f"{__package__}.plugin"]


@pytest.fixture(scope="session")
def backend(request):
    """The backend under test (selected by --backend / $FPTQ_BACKEND)."""
    from .plugin import selected_backend

    b, name = selected_backend(request.config)
    remember_backend_name(b, name)
    return b
