"""Writing model folders atomically, and the file names a transformers folder is made of.

A folder is assembled in a hidden temporary sibling and only then moved into place, so an
error half-way (an unsupported tokenizer, a full disk, Ctrl+C) never leaves a folder that
looks complete but mixes two models. A new folder appears with one ``rename``. Writing into an
existing folder replaces each file with ``os.replace`` and removes the model files of the old
contents that the new one does not have (a stale ``chat_template.jinja`` or shard index would
otherwise be loaded with the new weights); other files in the folder are left alone.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

# Files of a transformers (or native) model folder. Replaced as a set: see the module docstring.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "model-*-of-*.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt", "tokenizer.model")


def write_json(path: str | os.PathLike, data: dict) -> None:
    """Pretty, key-sorted JSON; non-finite floats become null (JSON has no NaN)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_finite(data), f, indent=2, sort_keys=True, allow_nan=False)
        f.write("\n")


def _finite(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def read_json(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


@contextmanager
def staged_folder(out_dir: str | os.PathLike, replace: tuple[str, ...] = MODEL_FILES) -> Iterator[str]:
    """Yield an empty temporary folder; when the block ends without error its contents become
    ``out_dir`` (see the module docstring). ``replace``: glob patterns of the files in an
    existing ``out_dir`` that the new contents supersede."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{out_dir} exists and is not a folder; choose another output path")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        yield tmp
        _publish(tmp, out_dir, replace)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _normal_modes(folder: str) -> None:
    """mkdtemp makes a private folder, and some writers (safetensors) private files: give them the
    modes a plain ``open``/``mkdir`` would have, so a published model is readable as usual."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(root, f), 0o666 & ~umask)


def _publish(tmp: str, out_dir: str, replace: tuple[str, ...]) -> None:
    _normal_modes(tmp)
    if not os.path.exists(out_dir):
        os.rename(tmp, out_dir)
        return
    new = set(os.listdir(tmp))
    for name in os.listdir(out_dir):
        if name not in new and any(fnmatch.fnmatch(name, p) for p in replace):
            path = os.path.join(out_dir, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
    for name in sorted(new):
        src, dst = os.path.join(tmp, name), os.path.join(out_dir, name)
        if os.path.isdir(src):
            shutil.rmtree(dst, ignore_errors=True)
        os.replace(src, dst)
