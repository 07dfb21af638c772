"""Loading a model skips the random init that the loaded weights replace (``empty_transformer``)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ATTNS, FFNS, NORMS, POS, tiny_config

from transformer_toolkit import Transformer
from transformer_toolkit.model.loading import empty_transformer
from transformer_toolkit.store.checkpoint import atomic_save

KINDS = [dict(attn=a) for a in ATTNS] + [dict(pos_enc=p) for p in POS] + [dict(ffn=f) for f in FFNS] + \
    [dict(norm=n, bias=True) for n in NORMS] + [dict(tie_weights=True)]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: "-".join(map(str, k.values())))
def test_an_empty_model_loaded_strictly_is_the_model(kind):
    torch.manual_seed(0)
    cfg = tiny_config(**kind)
    ref = Transformer(cfg).eval()
    rng = torch.random.get_rng_state()
    model = empty_transformer(cfg).eval()
    assert torch.equal(rng, torch.random.get_rng_state())  # no parameter was drawn
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    assert torch.equal(model(x)[0], ref(x)[0])  # buffers (rope tables, positions) are built as usual
    # the skipping ends with the call: a seeded model initialises as before
    torch.manual_seed(1)
    again = Transformer(cfg)
    torch.manual_seed(1)
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), Transformer(cfg).state_dict().values(),
                                                  strict=True))
    assert not torch.equal(again.embed.weight, ref.embed.weight)


def _saved(tmp_path, how):
    torch.manual_seed(0)
    ref = Transformer(tiny_config(attn="gqa", tie_weights=True)).eval()
    if how == "checkpoint":
        path = tmp_path / "best.pt"
        atomic_save({"model": ref.state_dict(), "model_config": ref.cfg.to_dict()}, path)
        return ref, lambda: Transformer.from_checkpoint(path)
    if how == "gguf":
        pytest.importorskip("gguf")
        from transformer_toolkit.convert.gguf import load_gguf, save_gguf
        path = save_gguf(ref, tmp_path / "m.gguf", dtype="f32")
        return ref, lambda: load_gguf(path)
    from transformer_toolkit.convert.hf_io import load_pretrained, save_pretrained
    from transformer_toolkit.convert.native import load_native, save_native
    save, load = (save_pretrained, load_pretrained) if how == "transformers" else (save_native, load_native)
    save(ref, tmp_path / how)
    return ref, lambda: load(tmp_path / how)


@pytest.mark.parametrize("how", ["checkpoint", "native", "transformers", "gguf"])
def test_loaders_skip_the_init_and_load_every_weight(tmp_path, how):
    ref, load = _saved(tmp_path, how)
    rng = torch.random.get_rng_state()
    model = load()
    assert torch.equal(rng, torch.random.get_rng_state())
    x = torch.randint(0, ref.cfg.vocab_size, (1, 16))
    torch.testing.assert_close(model(x)[0], ref(x)[0], rtol=0, atol=1e-6)


def test_the_skipping_is_this_threads_only():
    import threading

    from transformer_toolkit.model.loading import _NoParameterInit

    built = {}
    with _NoParameterInit():
        worker = threading.Thread(target=lambda: built.setdefault("other", Transformer(tiny_config())))
        worker.start()
        worker.join()
        here = torch.nn.Parameter(torch.zeros(8))
        torch.nn.init.normal_(here)
    assert torch.equal(here, torch.zeros(8))
    assert float(built["other"].embed.weight.std()) > 0.5 * built["other"].cfg.init_std


def test_gguf_tensors_whose_shapes_disagree_with_the_metadata_are_named(tmp_path):
    gguf = pytest.importorskip("gguf")
    from transformer_toolkit.convert.gguf import _write_hparams, load_gguf
    from transformer_toolkit.convert.gguf_tensors import gguf_name, to_gguf_layout

    model = Transformer(tiny_config(hidden_dim=64))
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    _write_hparams(w, tiny_config(hidden_dim=80))  # the metadata says a wider FFN than the tensors hold
    for key, t in model.state_dict().items():
        w.add_tensor(gguf_name(key), to_gguf_layout(key, t, 4, 4).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    message = r"tensor shapes do not match .*ffn_gate.weight \(64, 48\) \(expected \(80, 48\)\)"
    with pytest.raises(ValueError, match=message):
        load_gguf(tmp_path / "m.gguf")


def test_a_checkpoint_loads_memory_mapped_on_the_cpu(tmp_path, monkeypatch):
    import transformer_toolkit.store.checkpoint as checkpoint

    ref, load = _saved(tmp_path, "checkpoint")
    seen = []
    real = checkpoint.read_ckpt
    monkeypatch.setattr(checkpoint, "read_ckpt", lambda *a, **k: seen.append(k.get("mmap")) or real(*a, **k))
    x = torch.randint(0, ref.cfg.vocab_size, (1, 16))
    assert torch.equal(load()(x)[0], ref(x)[0])
    # a callable map_location may move storages anywhere: read the file whole then
    model = Transformer.from_checkpoint(tmp_path / "best.pt", map_location=lambda storage, loc: storage)
    assert torch.equal(model(x)[0], ref(x)[0]) and seen == [True, False]
