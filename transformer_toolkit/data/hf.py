"""``from_hf``: pretraining loaders from a Hugging Face dataset (hub name, local folder or data file)."""

from __future__ import annotations

import os

from ..optional import require
from ..tokenizer.chunking import split_text
from .config import DataConfig
from .corpus import CHUNK_BYTES, check_special, encode_documents
from .debug import print_debug
from .sources import loaders_from_writer
from .stream import stream_loaders
from .tokens import TokenWriter

DATA_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".txt": "text", ".csv": "csv", ".parquet": "parquet"}
DOCS_PER_READ = 1000


def import_datasets():
    return require("datasets", "from_hf", "hf")


def load_hf(dataset_name, split_name: str = "train", config_name: str | None = None, streaming: bool = False):
    """Open a dataset split from the hub, a ``save_to_disk`` folder, a dataset folder or a data file."""
    datasets = import_datasets()
    name = os.fspath(dataset_name)
    ext = os.path.splitext(name)[1].lower()
    if os.path.isdir(name):
        if any(os.path.exists(os.path.join(name, f)) for f in ("state.json", "dataset_dict.json")):
            ds = datasets.load_from_disk(name)  # a folder written by save_to_disk
            if isinstance(ds, datasets.DatasetDict):
                if split_name not in ds:
                    raise ValueError(f"{name!r} has splits {list(ds)}, not {split_name!r}; pass split_name=")
                ds = ds[split_name]
            return ds.to_iterable_dataset() if streaming else ds
        return datasets.load_dataset(name, config_name, split=split_name, streaming=streaming)
    if ext in DATA_FILE_BUILDERS:
        if not os.path.isfile(name):
            raise FileNotFoundError(f"data file {name!r} does not exist; check the path")
        return datasets.load_dataset(DATA_FILE_BUILDERS[ext], data_files={split_name: name}, split=split_name,
                                     streaming=streaming)
    return datasets.load_dataset(name, config_name, split=split_name, streaming=streaming)


def _check_column(ds, text_col: str, name: str) -> None:
    cols = getattr(ds, "column_names", None)
    if cols is not None and text_col not in cols:
        raise ValueError(f"dataset {name!r} has no column {text_col!r}; its columns are {cols}: pass text_col=")


def iter_documents(ds, text_col: str):
    """Each document of ``ds`` as pieces of at most ~1 MB cut at safe points (long documents stay bounded)."""
    for i, batch in enumerate(ds.iter(batch_size=DOCS_PER_READ)):
        for k, text in enumerate(batch[text_col]):
            if text is None:
                continue
            if not isinstance(text, str):
                raise ValueError(f"column {text_col!r} must hold text, got {type(text).__name__} in document "
                                 f"{i * DOCS_PER_READ + k}; pass text_col= naming a text column")
            yield split_text(text, CHUNK_BYTES)


def from_hf(dataset_name, tokenizer, cfg: DataConfig, text_col: str = "text", bos_id: int | None = None,
            eos_id: int | None = None, train_path=None, val_path=None, split_name: str = "train",
            config_name: str | None = None):
    """``(train_dl, val_dl)`` from a Hugging Face dataset.

    ``dataset_name``: a hub name (``"roneneldan/TinyStories"``), a folder saved with
    ``save_to_disk``, a local dataset folder, or a ``.json/.jsonl/.txt/.csv/.parquet`` file.
    In-memory mode tokenises every document into a token file (constant memory) and splits it
    like :func:`from_binary`. ``cfg.streaming=True`` tokenises on the fly instead and splits by
    document (see :mod:`.stream`); nothing is written to disk.
    """
    check_special(tokenizer, bos_id, eos_id)
    name = os.fspath(dataset_name)
    if cfg.streaming:
        if train_path is not None or val_path is not None:
            raise ValueError("streaming=True writes nothing to disk, so train_path/val_path would be ignored; "
                             "drop them, or set streaming=False to save .npy splits")
        ds = load_hf(name, split_name, config_name, streaming=True)
        _check_column(ds, text_col, name)
        train_dl, val_dl = stream_loaders(ds.select_columns([text_col]), tokenizer, cfg, text_col, bos_id, eos_id)
        if cfg.debug:
            print_debug(train_dl, tokenizer, cfg)
        return train_dl, val_dl
    ds = load_hf(name, split_name, config_name, streaming=False)
    _check_column(ds, text_col, name)
    ds = ds.select_columns([text_col])

    def write(out: str) -> None:
        with TokenWriter(out, tokenizer.vocab_size) as w:
            encode_documents(iter_documents(ds, text_col), tokenizer, w, bos_id, eos_id)
            if w.n_tokens == 0:
                raise ValueError(f"dataset {name!r} (split {split_name!r}, column {text_col!r}) holds no text")

    return loaders_from_writer(write, cfg, tokenizer, train_path, val_path)
