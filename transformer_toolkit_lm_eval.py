"""Makes ``lm_eval --model ttk`` work from the shell: registers transformer-toolkit's lm-eval model.

lm-eval 0.4.13 finds a model only in its own registry, which it fills from its own list when
``lm_eval.models`` is imported; it discovers no plugins (no entry points, no option to import a
module). The package therefore installs ``transformer_toolkit_lm_eval.pth``, whose one line
imports this module when Python starts. It imports nothing heavy (never torch, lm_eval or
transformer_toolkit): it only puts a finder in ``sys.meta_path`` that waits for
``lm_eval.models`` to be imported and then adds ``ttk`` to lm-eval's registry as a lazy entry
("transformer_toolkit.evaluation.harness:TTKLM"), which lm-eval imports only when a run asks
for ``--model ttk``. Any failure here is swallowed: a Python process must never be broken by
it. ``TTK_LM_EVAL_HOOK=0`` switches it off.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

WATCHED = "lm_eval.models"
NAME, TARGET = "ttk", "transformer_toolkit.evaluation.harness:TTKLM"


def register() -> None:
    """Add ``ttk`` to lm-eval's model registry (lazily, by import path) unless it is there."""
    try:
        from lm_eval.api.registry import model_registry

        if NAME not in model_registry:
            model_registry.register(NAME, target=TARGET)
    except Exception:  # noqa: BLE001 - an lm-eval without this registry: leave it alone
        pass


class _Loader:
    """The real loader of ``lm_eval.models``, then ``register``."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        self.inner.exec_module(module)
        register()

    def __getattr__(self, name):  # resource readers and the like: the real loader's
        return getattr(self.inner, name)


class _Finder:
    """Finds ``lm_eval.models`` as the path finder does, with ``_Loader`` around its loader."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != WATCHED:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _Loader(spec.loader)
        return spec


def install() -> None:
    """Watch for ``lm_eval.models`` (or register now if it is already imported)."""
    if os.environ.get("TTK_LM_EVAL_HOOK", "1") == "0":
        return
    if WATCHED in sys.modules:
        register()
    elif not any(f is _Finder for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder)


try:
    install()
except Exception:  # noqa: BLE001 - see the module docstring
    pass
