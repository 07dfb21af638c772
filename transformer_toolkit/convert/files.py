"""Writing model folders atomically, and the file names a transformers folder is made of.

A folder is assembled in a hidden temporary sibling and only then moved into place, so an
error half-way (an unsupported tokenizer, a full disk, Ctrl+C) never leaves a folder that
looks complete but mixes two models. A new folder appears with one ``rename``. Writing into an
existing folder replaces each model file with ``os.replace`` and removes the model files of the
old contents that the new one does not have (a stale ``chat_template.jinja`` or shard index would
otherwise be loaded with the new weights). Nothing else of the folder's is ever deleted or
overwritten: new subfolders merge into existing ones file by file, and when the new contents
would overwrite a file of the user's that is not a model file (a ``data/notes.txt`` that a Hub
repo also has) with other contents, or put a file where a folder is, nothing is moved and
``OutputConflict`` names them. A Hub pull counts no file as a model file: it only adds.
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

from ..config_base import read_json_object

# Files of a transformers (or native) model folder. Replaced as a set: see the module docstring.
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "model-*-of-*.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "chat_template.jinja", "chat_template.json", "added_tokens.json", "vocab.json", "merges.txt",
               "tokenizer.model", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


class OutputConflict(FileExistsError, ValueError):
    """The new contents would overwrite or delete something of the user's in the target folder.
    (A ValueError too: the one-line errors of ``ttk`` catch it as a mistake in the input.)"""


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
    """A JSON file holding an object; ValueError naming the file when it is not valid JSON
    (or UTF-8) or holds something else (a list, a number)."""
    return read_json_object(path, "restore or re-download it")


@contextmanager
def staged_folder(out_dir: str | os.PathLike, replace: tuple[str, ...] = MODEL_FILES) -> Iterator[str]:
    """Yield an empty temporary folder; when the block ends without error its contents become
    ``out_dir`` (see the module docstring). ``replace``: glob patterns of the files in an
    existing ``out_dir`` that the new contents supersede (``()``: the new contents may only add
    to the folder, as a Hub pull does)."""
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
    clashes = _clashes(tmp, out_dir, replace, top=True)
    if clashes:
        shown = ", ".join(clashes[:5]) + (f" and {len(clashes) - 5} more" if len(clashes) > 5 else "")
        raise OutputConflict(f"{out_dir} already holds {shown}, which the new files would overwrite"
                             f"{' (not model files)' if replace else ''}; nothing was written. Write into a new "
                             "folder, or move those away first")
    new = set(os.listdir(tmp))
    for name in os.listdir(out_dir):
        if name not in new and any(fnmatch.fnmatch(name, p) for p in replace):
            path = os.path.join(out_dir, name)
            if os.path.isfile(path) or os.path.islink(path):
                os.remove(path)
    _merge(tmp, out_dir)


def _replaceable(name: str, replace: tuple[str, ...], top: bool) -> bool:
    """Model files are replaced, and only at the top of the folder."""
    return top and any(fnmatch.fnmatch(name, p) for p in replace)


def _clashes(src: str, dst: str, replace: tuple[str, ...], top: bool) -> list[str]:
    """Paths under ``dst`` (relative to it) that moving ``src``'s contents in would lose: a
    non-model file with other contents, a folder where a file goes or the reverse, a link to a
    folder that a new subfolder would write through."""
    out = []
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if not os.path.lexists(d):
            continue
        if os.path.isdir(s):
            if os.path.isdir(d) and not os.path.islink(d):
                out += [f"{name}/{sub}" for sub in _clashes(s, d, replace, top=False)]
            else:
                out.append(name)
        elif os.path.isdir(d) and not os.path.islink(d):
            out.append(f"{name}/")
        elif not _replaceable(name, replace, top) and not _same_file_contents(s, d):
            out.append(name)
    return out


def _same_file_contents(a: str, b: str) -> bool:
    if not os.path.isfile(b) or os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _merge(src: str, dst: str) -> None:
    """Move ``src``'s contents into the existing folder ``dst``; subfolders merge (checked by
    ``_clashes`` first, so nothing of ``dst``'s is lost)."""
    for name in sorted(os.listdir(src)):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s) and os.path.isdir(d) and not os.path.islink(d):
            _merge(s, d)
        else:
            os.replace(s, d)
