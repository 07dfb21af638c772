import torch
import torch.nn as nn
import torch.nn.functional as F
from model_helpers import tiny_config

from transformer_toolkit.model import Transformer
from transformer_toolkit.model import fast_decode as fd


def _linears(model):
    return [m for m in model.modules() if type(m) is nn.Linear]


def test_fast_linear_matches_f_linear_on_both_layouts():
    for shape in [(40, 24), (24, 40), (24, 24)]:  # out x in: in < out (copied slices), in >= out (views)
        lin = nn.Linear(shape[1], shape[0], bias=True)
        fast = fd._FastLinear(lin)
        n = torch.get_num_threads()
        assert fast.slices.shape == (n, shape[1], shape[0] // n)
        assert (fast.slices.data_ptr() == lin.weight.data_ptr()) == (shape[1] >= shape[0])
        x = torch.randn(3, 1, shape[1])
        torch.testing.assert_close(fast(x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        big = torch.randn(4, 5, shape[1])  # more rows than MAX_ROWS: the ordinary kernel, bit-exact
        assert torch.equal(fast(big), F.linear(big, lin.weight, lin.bias))


def test_bf16_weights_use_the_packed_layout_and_agree():
    lin = nn.Linear(32, 48, bias=False).to(torch.bfloat16)
    fast = fd._FastLinear(lin)
    assert fast.slices is None or fd._pack(lin.weight.detach()) is None
    x = torch.randn(1, 32, dtype=torch.bfloat16)
    torch.testing.assert_close(fast(x).float(), F.linear(x, lin.weight).float(), atol=2e-2, rtol=2e-2)


def test_decode_weights_installs_and_removes_and_keeps_logits():
    model = Transformer(tiny_config(attn="gqa")).eval()
    x = torch.randint(0, 97, (2, 1))
    ref, _ = model(x)
    with fd.decode_weights(model):
        assert all("forward" in lin.__dict__ for lin in _linears(model))
        got, _ = model(x)
    assert not any("forward" in lin.__dict__ for lin in _linears(model))
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_decode_weights_is_off_in_training_mode():
    model = Transformer(tiny_config()).train()
    with fd.decode_weights(model):
        assert not any("forward" in lin.__dict__ for lin in _linears(model))


def test_plan_is_reused_until_a_weight_changes():
    model = Transformer(tiny_config()).eval()
    x = torch.randint(0, 97, (1, 4))
    with fd.decode_weights(model):
        pass
    first = fd._PLANS[model]
    with fd.decode_weights(model):
        pass
    assert fd._PLANS[model] is first  # nothing changed: no rebuild
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    logits, _ = model(x)
    logits.sum().backward()
    opt.step()
    model.eval()
    with fd.decode_weights(model):
        step = model(x[:, :1])[0]
    assert fd._PLANS[model] is not first  # the optimizer step bumped the weights' versions
    torch.testing.assert_close(step, model(x[:, :1])[0], atol=1e-5, rtol=1e-5)  # new weights used


def test_model_still_copies_and_pickles_after_generation():
    import copy
    import io

    model = Transformer(tiny_config()).to(torch.bfloat16)
    model.generate(torch.randint(0, 97, (1, 3)), max_new=3, temperature=0)
    assert model in fd._PLANS
    clone = copy.deepcopy(model)
    torch.save(model, io.BytesIO())
    x = torch.randint(0, 97, (1, 5))
    assert torch.equal(clone(x)[0], model(x)[0])


def test_layout_left_installed_by_an_open_stream_never_blocks_training():
    model = Transformer(tiny_config()).eval()
    stream = model.stream(torch.randint(0, 97, (1, 3)), max_new=5, temperature=0)
    next(stream)  # the stream is paused with the decode layout installed
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, 97, (1, 1))
    logits, _ = model(x)
    logits.sum().backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    opt.step()
    with torch.no_grad():
        after = model(x)[0]
    stream.close()
    torch.testing.assert_close(after, model(x)[0].detach())  # the updated weights were used


def test_plan_follows_dtype_casts_and_data_reassignment():
    model = Transformer(tiny_config()).eval()
    x = torch.randint(0, 97, (1, 1))
    model.generate(x, max_new=1, temperature=0)
    fp32_plan = fd._PLANS[model]
    model.to(torch.bfloat16)  # same Parameter objects, new storage
    model.generate(x, max_new=1, temperature=0)
    assert fd._PLANS[model] is not fp32_plan and fd._PLANS[model][0].dtype == torch.bfloat16
    model.to(torch.float32)
    head = model.head
    with torch.no_grad():
        head.weight.data = torch.randn_like(head.weight)  # new values, same version counter
    with fd.decode_weights(model):
        got = model(x)[0]
    torch.testing.assert_close(got, model(x)[0], atol=1e-5, rtol=1e-5)
