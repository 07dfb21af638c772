"""ChatSession: the prompt it builds, where it stops, streaming, history."""

from __future__ import annotations

import pytest
import torch
from model_helpers import tiny_config
from sft_helpers import small_bpe

from transformer_toolkit import ChatSession, ChatTemplate, Transformer


class Scripted(Transformer):
    """A model that emits a fixed token sequence (whatever the input), to test the chat loop."""

    def __init__(self, script, **kw):
        super().__init__(tiny_config(**kw))
        self.script, self.calls, self.inputs = list(script), 0, []

    def forward(self, tokens, cache=None, start_pos=0, doc_ids=None, logits_to_keep=0):
        self.inputs.append(tokens.clone())
        nxt = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        logits = torch.zeros(*tokens.shape, self.cfg.vocab_size)
        logits[..., nxt] = 10.0
        return logits, torch.zeros(())


def test_prompt_is_the_rendered_conversation_plus_header():
    tok = small_bpe()
    model = Scripted([tok.eos_id], vocab_size=tok.vocab_size, max_seq=128)
    chat = ChatSession(model, tok, template="llama3", system="Be brief.")
    msgs = chat.messages("add 2 3")
    ids = chat.prompt_ids(msgs, room=10)
    text, _ = ChatTemplate("llama3").format_messages(msgs, add_generation_prompt=True)
    assert ids == tok.encode(text)  # "[BOS]" text encodes to the BOS id: same as training's render
    assert ids[0] == tok.bos_id and tok.decode(ids).endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_stops_at_the_closer_and_keeps_history():
    tok = small_bpe()
    word = tok.encode("add")
    model = Scripted(word + [11] + word, vocab_size=tok.vocab_size, max_seq=128)  # 11 = <|eot_id|>
    chat = ChatSession(model, tok, template="llama3")
    assert chat.stop_ids() == [tok.eos_id, 11]
    pieces = list(chat.ask_stream("hello", temperature=0))
    assert "".join(pieces) == "add"
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "add"}]
    model.calls, model.inputs = 0, []
    assert chat.ask("again", temperature=0) == "add"
    # the second turn's prompt: the tokens taken from the first turn's cache, then its prefill
    prefill = model.inputs[0][0]
    reused = chat.prompt_cache.reused
    last_prompt = tok.decode(chat.prompt_cache.ids[0, :reused].tolist() + prefill.tolist())
    assert "hello" in last_prompt and "again" in last_prompt and last_prompt.count("add") == 1
    # only what follows the first turn's prompt and reply went through the model again
    assert reused > 0 and tok.decode(prefill.tolist()).startswith("<|eot_id|>") and "hello" not in tok.decode(
        prefill.tolist())
    chat.reset()
    assert chat.history == [] and len(chat.prompt_cache) == 0


def test_byte_level_closer_spelled_in_pieces():
    from transformer_toolkit import ByteLevelTokenizer

    tok = ByteLevelTokenizer()
    reply = list(b"hi there<|im_end|>\nmore")
    model = Scripted(reply, vocab_size=256, max_seq=256)
    chat = ChatSession(model, tok, template="chatml")
    assert chat.ask("x", temperature=0, max_new=40) == "hi there"


def test_a_question_too_long_for_the_context_is_cut_from_the_left():
    tok = small_bpe()
    model = Scripted([tok.eos_id], vocab_size=tok.vocab_size, max_seq=32)
    chat = ChatSession(model, tok, template="chatml")
    ids = chat.prompt_ids(chat.messages("what is python " * 10 + "reverse"), room=8)
    assert len(ids) == 24
    assert tok.decode(ids).endswith("reverse<|im_end|>\n<|im_start|>assistant\n")


def test_long_history_drops_whole_exchanges_and_keeps_the_system_prompt():
    tok = small_bpe()
    model = Scripted([tok.eos_id], vocab_size=tok.vocab_size, max_seq=96)
    chat = ChatSession(model, tok, template="chatml", system="Be brief.")
    for i in range(6):
        chat.history += [{"role": "user", "content": f"add {i} {i}"}, {"role": "assistant", "content": str(2 * i)}]
    room = 16
    ids = chat.prompt_ids(chat.messages("reverse"), room=room)
    text = tok.decode(ids)
    assert len(ids) <= 96 - room
    # the prompt is a whole conversation: the system turn, the newest exchanges that fit, the question
    n_kept = text.count("<|im_start|>user\n") - 1
    assert 0 < n_kept < 6
    expected, _ = ChatTemplate("chatml").format_messages(
        [{"role": "system", "content": "Be brief."}, *chat.history[-2 * n_kept:],
         {"role": "user", "content": "reverse"}], add_generation_prompt=True)
    assert ids == tok.encode(expected)
    # one more exchange would not have fitted
    longer, _ = ChatTemplate("chatml").format_messages(
        [{"role": "system", "content": "Be brief."}, *chat.history[-2 * (n_kept + 1):],
         {"role": "user", "content": "reverse"}], add_generation_prompt=True)
    assert len(tok.encode(longer)) > 96 - room


def test_each_turn_prefills_only_the_new_question_and_replies_as_a_fresh_prefill_would():
    tok = small_bpe()
    torch.manual_seed(0)
    model = Transformer(tiny_config(vocab_size=tok.vocab_size, max_seq=256, init_std=0.1)).eval()
    cached = ChatSession(model, tok, template="chatml", system="Be brief.", max_new=12, temperature=0)
    fresh = ChatSession(model, tok, template="chatml", system="Be brief.", max_new=12, temperature=0)
    previous = []
    for question in ("what is python", "how do i reverse a list", "add 2 3", "be brief"):
        ids = cached.prompt_ids(cached.messages(question), room=12)
        fresh.prompt_cache.clear()  # the reference recomputes the whole conversation
        assert cached.ask(question) == fresh.ask(question)
        # the previous prompt and (most of) its reply came from the cache, the rest was prefilled
        assert len(previous) <= cached.prompt_cache.reused < len(ids)
        previous = ids
    replies = [m["content"] for m in cached.history if m["role"] == "assistant"]
    assert cached.history == fresh.history and sum(map(bool, replies)) >= 2, replies


def test_a_reply_cut_short_joins_the_history_as_far_as_it_was_shown():
    tok = small_bpe()
    word = tok.encode("add")
    model = Scripted(word * 6 + [11], vocab_size=tok.vocab_size, max_seq=128)
    chat = ChatSession(model, tok, template="llama3", temperature=0)
    pieces = chat.ask_stream("hello")
    shown = next(pieces) + next(pieces)
    pieces.close()  # the reader stops (as `ttk chat` does on Ctrl-C)
    assert chat.history == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": shown.strip()}]
    assert shown.strip() and shown.strip() != "add" * 6
    unread = chat.ask_stream("again")
    unread.close()  # closed before it started: nothing was shown, nothing joins
    assert len(chat.history) == 2

    def interrupted(*args, **kwargs):  # Ctrl-C arriving while the model computes the third token
        for i, t in enumerate(stream_real(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield t

    import transformer_toolkit.sft.chat as chat_module

    stream_real, chat_module.stream = chat_module.stream, interrupted
    got = []
    try:
        with pytest.raises(KeyboardInterrupt):
            for piece in chat.ask_stream("third"):
                got.append(piece)
    finally:
        chat_module.stream = stream_real
    assert got and chat.history[-2:] == [{"role": "user", "content": "third"},
                                         {"role": "assistant", "content": "".join(got).strip()}]


def test_a_full_window_moves_by_half_so_the_next_turns_reuse_the_cache():
    tok = small_bpe()
    torch.manual_seed(0)
    model = Transformer(tiny_config(vocab_size=tok.vocab_size, max_seq=160, init_std=0.1)).eval()
    room = 8
    keep = 160 - room
    cached = ChatSession(model, tok, template="chatml", system="Be brief.", max_new=room, temperature=0)
    fresh = ChatSession(model, tok, template="chatml", system="Be brief.", max_new=room, temperature=0)
    prompts = []
    turn_ids = cached._turn_ids
    cached._turn_ids = lambda prompt, r: prompts.append(turn_ids(prompt, r)) or prompts[-1]
    questions = ["what is python", "how do i reverse a list", "add 2 3", "be brief", "what is a list"] * 3
    moved = []
    for k, question in enumerate(questions):
        fresh.prompt_cache.clear()  # the reference recomputes its whole prompt every turn
        assert cached.ask(question) == fresh.ask(question)
        ids = prompts[-1]
        assert len(ids) <= keep
        if k and ids[:len(prompts[-2])] == prompts[-2]:  # the window stayed: the previous turn is cached
            assert cached.prompt_cache.reused >= len(prompts[-2])
        elif k:  # it moved: past enough exchanges to leave room for the next turns
            moved.append(k)
            newest_only = tok.decode(ids).count("<|im_start|>user\n") == 2
            assert len(ids) <= keep // 2 or newest_only
    assert cached.history == fresh.history and len(cached.history) == 2 * len(questions)
    # the window moved a few times, never on two turns in a row (dropping only what must go
    # would move it on every turn once the conversation fills the context)
    assert len(moved) >= 2 and all(b - a >= 2 for a, b in zip(moved[:-1], moved[1:], strict=True)), moved
    # a moved window holds the newest exchanges: the system prompt, then history from _start on
    expected, _ = ChatTemplate("chatml").format_messages(
        [{"role": "system", "content": "Be brief."}, *cached.history[cached._start:-2],
         {"role": "user", "content": questions[-1]}], add_generation_prompt=True)
    assert prompts[-1] == tok.encode(expected) and cached._start > 0
    cached.history = cached.history[:4]  # cut by hand: the window starts from the beginning again
    cached.ask("add 2 3")
    assert tok.decode(prompts[-1]).count("<|im_start|>user\n") == 3
    cached.reset()
    assert cached._start == 0
