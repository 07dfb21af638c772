"""Hugging Face Hub: ``login``, ``push_to_hub``, ``pull_from_hub`` (through ``huggingface_hub``).

What is pushed is a folder ``Transformer.from_pretrained`` loads: the transformers folder of
``save_pretrained`` when the config has an exact transformers counterpart (so
``AutoModelForCausalLM.from_pretrained(repo_id)`` works too), else a native folder (our
parameter names and ``TransformerConfig``; see convert/native.py); plus ``metrics.json`` and a
``README.md`` model card. Weights are safetensors, never pickles, and ``pull_from_hub``
refuses to download pickles at all.

Importing this module changes nothing (no environment variables, no network). The token is
never printed or logged. Every function takes ``api=`` (an ``HfApi``-like client) so tests and
other destinations can stand in for the Hub.

>>> login(token="hf_...")                                                    # doctest: +SKIP
>>> push_to_hub("me/tiny", model, tokenizer=tok, metrics={"val_loss": 1.83}, step=3000)  # doctest: +SKIP
>>> model = Transformer.from_pretrained(pull_from_hub("me/tiny", save_dir="pulled"))      # doctest: +SKIP
"""

from __future__ import annotations

import getpass
import json
import math
import os
import posixpath
import sys
import tempfile
import warnings

from .atomic import atomic_write_text
from .convert.auto import export_blocker, write_model_folder
from .convert.files import MODEL_FILES, staged_folder, write_json
from .optional import require

# Extensions of pickled weights: loading them can run arbitrary code, so they are never fetched.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# A repo's own Python code (transformers' ``auto_map`` / trust_remote_code): never run, so never fetched.
CODE_SUFFIXES = (".py", ".pyc")
# Files a push replaces in the repo: these names are deleted when the new push does not have them.
PUSHED_FILES = (*MODEL_FILES, "metrics.json", "README.md")


def _hub():
    return require("huggingface_hub", "the Hub functions", "hf")


def _default_api(token: str | None):
    """The real client (replaced in tests through the ``api=`` arguments)."""
    return _hub().HfApi(token=token)


# login -------------------------------------------------------------------------------------------
def login(token: str | None = None, validate: bool = True, api=None) -> str | None:
    """Store a Hub access token where ``huggingface_hub`` looks for it (``HF_TOKEN_PATH``,
    ``~/.cache/huggingface/token`` by default), so later pushes and pulls use it.

    With ``validate`` the token is checked with the Hub first (``whoami``): a rejected token
    raises ``ValueError`` and is not stored; when the Hub cannot be reached the token is stored
    anyway with a warning (offline set-up). ``token=None`` keeps an existing login, or asks for
    the token on a terminal. Returns the user name when the Hub confirmed it, else None.
    The token is never printed, logged or put in ``os.environ``."""
    hub = _hub()
    if token is None:
        if hub.get_token():
            return None  # already logged in (HF_TOKEN or a stored token)
        if not sys.stdin.isatty():
            raise ValueError("no Hub token: call login(token=...) with a token from "
                             "https://huggingface.co/settings/tokens, or set HF_TOKEN")
        token = getpass.getpass("Hugging Face token (input hidden): ")
    token = token.strip()
    if not token:
        raise ValueError("the Hub token is empty; copy it from https://huggingface.co/settings/tokens")
    user = _validate(token, api or _default_api(None)) if validate else None
    _store_token(token, hub.constants.HF_TOKEN_PATH)
    if os.environ.get("HF_TOKEN") and os.environ["HF_TOKEN"] != token:
        warnings.warn("HF_TOKEN is set in the environment and takes precedence over the stored token; "
                      "unset it to use the token just stored", RuntimeWarning, stacklevel=2)
    return user


def _validate(token: str, api) -> str | None:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        info = api.whoami(token=token)
    except HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status in (401, 403):
            raise ValueError(f"the Hub rejected this token (HTTP {status}); create a new one at "
                             "https://huggingface.co/settings/tokens") from None
        raise
    except Exception as e:  # noqa: BLE001 - sorted below: only "cannot reach the Hub" is tolerated
        if not is_connection_error(e):
            raise
        warnings.warn(f"could not reach the Hub to check the token ({type(e).__name__}); stored without "
                      "validation", RuntimeWarning, stacklevel=3)
        return None
    return info.get("name") if isinstance(info, dict) else None


def is_connection_error(e: BaseException) -> bool:
    """Network-level failures of any HTTP stack huggingface_hub may use (requests, httpx)."""
    names = {c.__name__ for c in type(e).__mro__}
    return isinstance(e, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "NetworkError", "ConnectError", "Timeout", "TimeoutException"})


def _store_token(token: str, path: str | os.PathLike) -> None:
    """Owner-only file, written through a temp file and a rename."""
    atomic_write_text(path, token, private=True)


# push ----------------------------------------------------------------------------------------------
def push_to_hub(repo_id: str, model, cfg=None, tokenizer=None, metrics: dict | None = None, step: int | None = None,
                private: bool = True, *, template=None, token: str | None = None, api=None,
                commit_message: str | None = None):
    """Upload ``model`` (+ tokenizer, chat ``template``, ``metrics``, ``step``) to ``repo_id``.

    Creates the repo when needed (``private`` applies to a new repo only) and replaces the model
    files of an earlier push in one commit. ``cfg`` (the seed README passes the model config) must
    equal ``model.cfg`` when given. Returns what the client's ``upload_folder`` returns (the
    commit info)."""
    if cfg is not None:
        from .model.config import TransformerConfig

        given = TransformerConfig.from_dict(cfg) if isinstance(cfg, dict) else cfg
        if given != model.cfg:
            raise ValueError("cfg differs from model.cfg; pass the config the model was built with (or leave cfg "
                             "out: the model's own config is pushed)")
    api = api or _default_api(token)
    metrics = {k: _plain(v) for k, v in (metrics or {}).items()}
    with tempfile.TemporaryDirectory(prefix="ttk-push-") as tmp:
        folder = os.path.join(tmp, "model")
        if _transformers_tokenizer(tokenizer):
            kind = write_model_folder(model, folder, tokenizer=tokenizer, template=template)
        else:  # e.g. ByteLevelTokenizer: no transformers form, so its own file (load_tokenizer reads it)
            kind = write_model_folder(model, folder)
            tokenizer.save(os.path.join(folder, "tokenizer.json"))
        write_json(os.path.join(folder, "metrics.json"), {"step": step, "metrics": metrics})
        with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
            f.write(model_card(repo_id, model, kind, metrics, step, tokenizer is not None))
        api.create_repo(repo_id, private=private, exist_ok=True)
        message = commit_message or (f"transformer-toolkit: step {step}" if step is not None else
                                     "transformer-toolkit: upload model")
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=message,
                                 delete_patterns=list(PUSHED_FILES))


def _transformers_tokenizer(tokenizer) -> bool:
    return tokenizer is None or hasattr(tokenizer, "to_transformers") or \
        hasattr(getattr(tokenizer, "_tok", None), "save_pretrained")


def _plain(v):
    """A metric as a JSON number (tensors and numpy scalars included)."""
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def model_card(repo_id: str, model, kind: str, metrics: dict, step: int | None, has_tokenizer: bool) -> str:
    """README.md of a pushed model: front matter, metrics, architecture and how to load it."""
    cfg = model.cfg
    name = repo_id.rsplit("/", 1)[-1]
    lib = "transformers" if kind == "transformers" else "transformer-toolkit"
    lines = ["---", f"library_name: {lib}", "pipeline_tag: text-generation", "tags:", "- transformer-toolkit",
             "---", "", f"# {name}", "",
             f"A {model.n_params()}-parameter decoder trained with transformer-toolkit"
             + (f", pushed at step {step}." if step is not None else "."), ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in metrics.items()]
        lines.append("")
    lines += ["## Architecture", "",
              f"dim {cfg.dim}, {cfg.n_layers} layers, {cfg.n_heads} heads ({cfg.attn}, {cfg.n_kv_heads} kv heads), "
              f"ffn {cfg.ffn}, {cfg.norm}, positions {cfg.pos_enc}, vocab {cfg.vocab_size}, context {cfg.max_seq}, "
              f"tied embeddings {cfg.tie_weights}.", "", "## Use", ""]
    if kind == "transformers":
        lines += ["A standard transformers folder:", "", "```python",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  f'model = AutoModelForCausalLM.from_pretrained("{repo_id}")']
        if has_tokenizer:
            lines.append(f'tok = AutoTokenizer.from_pretrained("{repo_id}")')
        lines += ["```", ""]
    else:
        lines += ["This configuration has no transformers counterpart, so the folder is in transformer-toolkit's "
                  "native format (our parameter names in `model.safetensors`, our `TransformerConfig` in "
                  "`config.json`); transformers cannot load it.", "",
                  f"Why: {export_blocker(cfg)}", ""]
    lines += ["With transformer-toolkit:", "", "```python", "from transformer_toolkit import Transformer",
              "from transformer_toolkit.hf_hub import pull_from_hub", "",
              f'path = pull_from_hub("{repo_id}", save_dir="{name}")', "model = Transformer.from_pretrained(path)"]
    if has_tokenizer:
        lines += ["from transformer_toolkit import load_tokenizer", "tok = load_tokenizer(path)"]
    lines += ["```", ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return json.dumps(v) if not isinstance(v, str) else v


# pull ----------------------------------------------------------------------------------------------
def pull_from_hub(repo_id: str, save_dir: str | os.PathLike = "checkpoints", *, revision: str | None = None,
                  token: str | None = None, api=None) -> str:
    """Download a model repo into ``save_dir`` and return that path (``Transformer.from_pretrained``
    and ``load_tokenizer`` load it).

    Pickled files (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are skipped with a warning and
    a repo holding no safetensors/GGUF weights is refused: unpickling runs arbitrary code. Python
    files (a repo's custom model or tokenizer code) are skipped with a warning too: this library
    never runs a model folder's code. A file name that would land outside ``save_dir`` (absolute,
    ``..``) fails the whole pull before anything is downloaded. Files arrive in a temporary folder
    first and move into ``save_dir`` only when every download succeeded.

    Into an existing ``save_dir`` the pull only adds: it never deletes or overwrites what is there.
    A repo folder such as ``data/`` merges into the user's, a file already there with the same
    contents stays, and a file that the repo would overwrite with other contents (a run's own
    ``tokenizer.json``, an earlier pull of another revision) fails the pull with
    ``convert.files.OutputConflict`` before anything is moved."""
    api = api or _default_api(token)
    names = [n for n in api.list_repo_files(repo_id, revision=revision) if n != ".gitattributes"]
    bad = [n for n in names if not _safe_name(n)]
    if bad:
        raise ValueError(f"{repo_id} has file names that would escape {os.fspath(save_dir)!r}: {bad[:5]}; "
                         "refusing to download")
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        warnings.warn(f"{repo_id}: skipping pickled files {pickles[:5]} (unpickling runs arbitrary code)",
                      RuntimeWarning, stacklevel=2)
    code = [n for n in names if n.lower().endswith(CODE_SUFFIXES)]
    if code:
        warnings.warn(f"{repo_id}: skipping Python files {code[:5]} (transformer-toolkit never runs a model "
                      "repo's own code; its models and tokenizers load without it)", RuntimeWarning, stacklevel=2)
    wanted = [n for n in names if n not in pickles and n not in code]
    if not any(n.endswith((".safetensors", ".gguf")) for n in wanted):
        raise ValueError(f"{repo_id} has no safetensors or GGUF weights (files: {names[:8]}); only pickled "
                         "weights, which are never loaded")
    with staged_folder(save_dir, replace=()) as tmp:  # replace nothing of the user's
        for name in wanted:
            got = api.hf_hub_download(repo_id, name, revision=revision, local_dir=tmp)
            expected = os.path.realpath(os.path.join(tmp, *name.split("/")))
            if os.path.realpath(got) != expected:
                raise ValueError(f"download of {name!r} landed at {got!r}, outside the target folder; refusing it")
        _drop_download_metadata(tmp)
    return os.fspath(save_dir)


def _safe_name(name: str) -> bool:
    """A relative POSIX path with no ``..``, no empty part, no backslash and no drive letter."""
    if not name or "\\" in name or name.startswith("/") or ":" in name.split("/")[0]:
        return False
    parts = name.split("/")
    return all(p not in ("", ".", "..") for p in parts) and posixpath.normpath(name) == name


def _drop_download_metadata(folder: str) -> None:
    """huggingface_hub keeps per-file metadata in ``local_dir/.cache``; the pulled folder does not need it."""
    import shutil

    shutil.rmtree(os.path.join(folder, ".cache"), ignore_errors=True)
