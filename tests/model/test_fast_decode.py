import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from model_helpers import tiny_config

from transformer_toolkit.model import Transformer
from transformer_toolkit.model import fast_decode as fd
from transformer_toolkit.model.kernels import Linear, decode_kernels


def _linears(model):
    return [m for m in model.modules() if isinstance(m, Linear)]


def test_fast_linear_matches_f_linear_on_both_layouts():
    for shape in [(40, 24), (24, 40), (24, 24)]:  # out x in: in < out (copied slices), in >= out (views)
        lin = nn.Linear(shape[1], shape[0], bias=True)
        fast = fd._FastLinears([lin])
        n = torch.get_num_threads()
        assert fast.layout.slices.shape == (n, shape[1], shape[0] // n)
        assert (fast.layout.slices.data_ptr() == lin.weight.data_ptr()) == (shape[1] >= shape[0])
        x = torch.randn(3, 1, shape[1])
        torch.testing.assert_close(fast(0, x), F.linear(x, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        big = torch.randn(4, 5, shape[1])  # more rows than MAX_ROWS: the ordinary kernel, bit-exact
        assert torch.equal(fast(0, big), F.linear(big, lin.weight, lin.bias))


def test_bf16_weights_use_the_packed_layout_and_agree():
    lin = nn.Linear(32, 48, bias=False).to(torch.bfloat16)
    fast = fd._FastLinears([lin])
    assert fast.layout.slices is None or fd._pack(lin.weight.detach()) is None
    x = torch.randn(1, 32, dtype=torch.bfloat16)
    torch.testing.assert_close(fast(0, x).float(), F.linear(x, lin.weight).float(), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_a_group_gives_each_member_its_own_linear_in_any_call_order(dtype, bias):
    torch.manual_seed(0)
    members = [nn.Linear(32, out, bias=bias).to(dtype) for out in (48, 16, 16)]
    group = fd._FastLinears(members)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    x, other = torch.randn(2, 1, 32, dtype=dtype), torch.randn(2, 1, 32, dtype=dtype)

    def check(i, inp):
        want = F.linear(inp, members[i].weight, members[i].bias)
        got = group(i, inp)
        assert got.shape == want.shape
        torch.testing.assert_close(got.float(), want.float(), **tol)

    with torch.no_grad():
        for order in ([0, 1, 2], [2, 0, 1], [1, 1, 0, 2]):  # 1 twice: the second computes afresh
            for i in order:
                check(i, x)
        check(0, x)
        check(1, other)  # a different input before 1 and 2 took theirs: computed for that input
        check(2, x)
        for i in range(3):  # then a full round leaves nothing held
            check(i, other)
        assert group.input is None and group.outputs is None


def test_a_group_sees_a_weight_change_of_any_member():
    members = [nn.Linear(16, 16, bias=False) for _ in range(2)]
    group = fd._FastLinears(members)
    with torch.no_grad():
        members[1].weight.mul_(2)  # bumps its version: the stacked copy is stale
        x = torch.randn(1, 16)
        assert torch.equal(group(1, x), F.linear(x, members[1].weight))
        assert torch.equal(group(0, x), F.linear(x, members[0].weight))


@pytest.mark.parametrize("attn,ffn,sizes", [
    ("gqa", "swiglu", [3, 2]),  # q/k/v, gate/up
    ("mha", "ffn", [3]),  # an ungated FFN has nothing to stack
    ("mla", "geglu", [2, 2]),  # MLA's q_proj and kv_a_proj read the same input
    ("gqa", "moe_shared", [3, 2]),  # the shared expert is a gated FFN
])
def test_decode_kernels_stacks_siblings_and_keeps_logits(attn, ffn, sizes):
    model = Transformer(tiny_config(attn=attn, ffn=ffn, qkv_bias=attn == "gqa")).eval()
    prompt, nxt = torch.randint(0, 97, (2, 5)), torch.randint(0, 97, (2, 1))
    with torch.no_grad():
        cache = model.make_cache(2)
        model(prompt, cache=cache)
        ref = model(nxt, cache=cache, start_pos=5)[0]
        with decode_kernels(model):
            groups = fd._PLANS[model]
            assert sorted(len(g.linears) for g in groups if len(g.linears) > 1) == sorted(sizes * 2)  # 2 layers
            cache = model.make_cache(2)
            model(prompt, cache=cache)  # prefill: 10 rows, the ordinary kernel
            got = model(nxt, cache=cache, start_pos=5)[0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_decode_kernels_installs_and_removes_and_keeps_logits():
    model = Transformer(tiny_config(attn="gqa")).eval()
    x = torch.randint(0, 97, (2, 1))
    ref, _ = model(x)
    with decode_kernels(model):
        assert all(lin.kernel is not None for lin in _linears(model)) and model.kernel_mode == "decode"
        got, _ = model(x)
    assert all(lin.kernel is None for lin in _linears(model)) and model.kernel_mode is None
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_decode_kernels_is_off_in_training_mode():
    model = Transformer(tiny_config()).train()
    with decode_kernels(model):
        assert all(lin.kernel is None for lin in _linears(model))


def test_plan_is_reused_until_a_weight_changes():
    model = Transformer(tiny_config()).eval()
    x = torch.randint(0, 97, (1, 4))
    with decode_kernels(model):
        pass
    first = fd._PLANS[model]
    with decode_kernels(model):
        pass
    assert fd._PLANS[model] is first  # nothing changed: no rebuild
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    logits, _ = model(x)
    logits.sum().backward()
    opt.step()
    model.eval()
    with decode_kernels(model):
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
    with decode_kernels(model):
        got = model(x)[0]
    torch.testing.assert_close(got, model(x)[0], atol=1e-5, rtol=1e-5)
