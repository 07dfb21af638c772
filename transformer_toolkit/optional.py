"""The one guard for optional dependencies: a feature imports what it needs where it is used, and
a missing package fails with one line that names the feature and the install command."""

from __future__ import annotations

import importlib
from types import ModuleType


def missing(feature: str, package: str, extra: str | None) -> str:
    """The one-line message for a missing optional ``package`` (``extra``: the project extra that
    installs it; None for a core dependency, installed on its own)."""
    fix = f'pip install "transformer-toolkit[{extra}]"' if extra else f"pip install {package}"
    return f"{feature} needs the {package} package: {fix}"


def require(module: str, feature: str, extra: str | None, package: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or ImportError saying that ``feature`` needs it and how
    to install it. ``package``: the name to install when it is not the module's first part.

    >>> gguf = require("gguf", "GGUF support", "gguf")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(missing(feature, package or module.split(".")[0], extra)) from e
