"""The optional-dependency guard: a feature whose package is missing fails with one line naming
the feature and the install command; a present package is returned."""

from __future__ import annotations

import sys

import pytest

from transformer_toolkit.optional import require


def test_a_present_package_is_returned():
    import json

    assert require("json", "anything", "hf") is json


@pytest.mark.parametrize("module,extra,fix", [
    ("gguf", "gguf", 'pip install "transformer-toolkit[gguf]"'),
    ("tokenizers", None, "pip install tokenizers"),
])
def test_a_missing_package_names_the_feature_and_the_fix(monkeypatch, module, extra, fix):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(ImportError) as exc:
        require(module, "Some feature", extra)
    assert str(exc.value) == f"Some feature needs the {module} package: {fix}"


def test_the_features_use_it(monkeypatch, tmp_path):
    from transformer_toolkit.convert.gguf import _gguf
    from transformer_toolkit.trainer.metrics import MetricsLog

    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ImportError, match=r'^GGUF support needs the gguf package: .*"transformer-toolkit\[gguf\]"$'):
        _gguf()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"tensorboard=True needs the tensorboard package: .*\[tb\]"):
        MetricsLog(tmp_path, tensorboard=True)
