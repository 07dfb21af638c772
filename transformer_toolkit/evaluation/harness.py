"""The lm-evaluation-harness model ``ttk``: any model this library loads, scored in process.

>>> lm = TTKLM(run="runs/sft")                                  # doctest: +SKIP
>>> lm_eval.simple_evaluate(model=lm, tasks=["hellaswag"])      # doctest: +SKIP

or ``lm_eval --model ttk --model_args run=runs/sft --tasks ...`` (registered by the installed
``transformer_toolkit_lm_eval.pth``; ``python -m transformer_toolkit.evaluation`` is the same
command line without it), or ``ttk eval --run runs/sft --tasks ...``.

Numbers equal lm-eval's ``hf`` model on the same weights (``tests/evaluation/test_harness.py``
runs both): texts are encoded like ``HFLM`` does (``TemplateLM._encode_pair`` moves a context's
trailing spaces onto the continuation; a context-free request is scored after BOS, else EOS),
requests longer than the model's context keep their last tokens, rolling log-likelihoods use
lm-eval's disjoint windows, and generation stops at EOS (and the chat closer), then is cut at
the first stop sequence. It is faster because requests sharing a context (multiple-choice
options) run that context once, the head runs only where log-probabilities are read, and
generation runs every prompt on one inference engine, each row at its own position, a finished
row's slot taken by the next prompt (``scoring.py``, ``until.py``).
This module imports lm-eval; the rest of the package does not.
"""

from __future__ import annotations

import warnings

import torch

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import model_registry
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
except ImportError as e:  # pragma: no cover - the message is the point
    raise ImportError('the lm-eval adapter needs lm-evaluation-harness: pip install -e ".[eval]"') from e

from tqdm import tqdm

from .scoring import BATCH_TOKENS, loglikelihoods, rolling_windows
from .until import generate_until

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
MAX_GEN_TOKS = 256  # lm-eval's default when a task sets none (HFLM.max_gen_toks)
SAMPLING_KWARGS = ("temperature", "top_k", "top_p", "do_sample", "until", "max_gen_toks")


class TTKLM(TemplateLM):
    """lm-eval's ``LM`` over a ``Transformer``.

    ``run=`` (or ``pretrained=``): a run folder, a ``.pt`` checkpoint, a transformers folder or a
    ``.gguf`` file; or ``model=`` and ``tokenizer=`` objects (``template=`` a chat template for
    ``--apply_chat_template``: a preset name or ``ChatTemplate``; default the run's or the
    model's own). ``batch_size`` caps the rows of a forward (``"auto"``: 64) and ``batch_tokens``
    its rows x length; ``max_length`` overrides the context (default ``max_seq``); ``dtype``
    ("float32", "bfloat16", ...) and ``device`` move the model."""

    def __init__(self, run: str | None = None, pretrained: str | None = None, model=None, tokenizer=None,
                 template=None, batch_size: int | str = 16, max_batch_size: int | None = None,
                 batch_tokens: int = BATCH_TOKENS, device: str | None = None, dtype: str | None = None,
                 max_length: int | None = None, prefix_token_id: int | None = None,
                 trust_remote_code: bool | None = None, **unknown):
        super().__init__()
        if unknown:
            raise ValueError(f"model_args {', '.join(sorted(unknown))} are not options of the ttk model; options: "
                             "run (or pretrained), template, batch_size, batch_tokens, device, dtype, max_length, "
                             "prefix_token_id")
        source = run or pretrained
        if (source is None) == (model is None):
            raise ValueError("give the ttk model run=PATH (a run folder, .pt, transformers folder or .gguf), or "
                             "model= and tokenizer= objects")
        if source is not None:
            from .source import load

            model, tokenizer, found = load(source)
            template = template or found
        if tokenizer is None:
            raise ValueError("model= needs tokenizer= as well")
        self.source = str(source) if source is not None else type(model).__name__
        if dtype is not None:
            if str(dtype) not in DTYPES:
                raise ValueError(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
            model = model.to(DTYPES[str(dtype)])
        if device is not None and str(device).startswith("cuda") and not torch.cuda.is_available():
            warnings.warn(f"device {device} is not available (no CUDA GPU): running on the CPU", stacklevel=2)
            device = "cpu"  # lm-eval's command line asks for cuda by default; its hf model falls back alike
        if device is not None:
            model = model.to(device)
        self.model, self.tokenizer, self.template = model, tokenizer, template  # scoring switches to eval mode itself
        self._device = next(model.parameters()).device
        self.batch_size = 64 if str(batch_size).startswith("auto") else int(batch_size)
        self.batch_tokens = int(batch_tokens)
        self._max_length = int(max_length) if max_length else None
        if self._max_length is not None and not 0 < self._max_length <= model.cfg.max_seq:
            raise ValueError(f"max_length={max_length}: the model holds at most max_seq={model.cfg.max_seq} tokens")
        self.custom_prefix_token_id = prefix_token_id
        self._warned: set[str] = set()

    # what lm-eval asks of a model ------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        eos = self.tokenizer.eos_id
        return eos if eos is not None else self.prefix_token_id

    @property
    def prefix_token_id(self) -> int:
        if self.custom_prefix_token_id is not None:
            return int(self.custom_prefix_token_id)
        from .bpb import prefix_id

        return prefix_id(self.tokenizer)

    @property
    def max_length(self) -> int:
        return self._max_length or self.model.cfg.max_seq

    @property
    def tokenizer_name(self) -> str:
        return "ttk__" + self.source.strip("/").replace("/", "__")

    def get_model_info(self) -> dict:
        return {"model_source": self.source, "model_num_parameters": self.model.num_parameters(),
                "model_dtype": str(next(self.model.parameters()).dtype)}

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    # tokens ----------------------------------------------------------------------------------
    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs) -> list[int]:
        """Like ``HFLM.tok_encode``: a transformers tokenizer adds its own special tokens unless
        the text already starts with the prefix token; ours (and the transformers tokenizer our
        export writes) add none."""
        hf = self._transformers_tokenizer()
        if hf is not None:
            if add_special_tokens is None:
                add_special_tokens = not string.startswith(hf.decode(self.prefix_token_id))
            ids = hf.encode(string, add_special_tokens=add_special_tokens)
        else:
            ids = self.tokenizer.encode(string)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def _transformers_tokenizer(self):
        """The transformers tokenizer behind an ``HFTokenizer`` (a pretrained model's), else None."""
        from ..tokenizer.hf import HFTokenizer

        return self.tokenizer._tok if isinstance(self.tokenizer, HFTokenizer) else None

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def _on_truncate(self, total: int, max_len: int) -> None:
        self._warn_once("truncate", f"a request of {total} tokens is longer than the model's context ({max_len}): "
                                    "its oldest tokens are dropped (left truncation, as lm-eval's hf model does); "
                                    "said once per run")

    # scoring ---------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        results = loglikelihoods(self.model, pairs, max_len=self.max_length, batch_size=self.batch_size,
                                 batch_tokens=self.batch_tokens, on_truncate=self._on_truncate)
        for (request_str, _, _), answer in zip(requests, results, strict=True):
            if request_str is not None:
                self.cache_hook.add_partial("loglikelihood", request_str, answer)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        windows, owner = [], []
        for i, (string,) in enumerate(tqdm([r.args for r in requests], disable=disable_tqdm)):
            for w in rolling_windows(self.tok_encode(string), self.prefix_token_id, self.max_length):
                windows.append(w)
                owner.append(i)
        scores = loglikelihoods(self.model, windows, max_len=self.max_length, batch_size=self.batch_size,
                                batch_tokens=self.batch_tokens)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores, strict=True):
            totals[i] += logprob
        for r, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", r.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(repr(sorted(r.args[1].items())), []).append(i)
        out: list[str] = [""] * len(requests)
        for idx in groups.values():
            kwargs = normalize_gen_kwargs(requests[idx[0]].args[1], MAX_GEN_TOKS)
            until = handle_stop_sequences(kwargs.get("until"), eos=eos)
            max_new = int(kwargs["max_gen_toks"])
            room = self.max_length - max_new
            if room <= 0:
                raise ValueError(f"max_gen_toks={max_new} leaves no room for a prompt in the model's context "
                                 f"({self.max_length}); lower max_gen_toks")
            ignored = sorted(set(kwargs) - set(SAMPLING_KWARGS))
            if ignored:
                self._warn_once("gen_kwargs", f"generation options {', '.join(ignored)} are not used by the ttk "
                                              "model (it takes temperature, top_k, top_p, do_sample, until, "
                                              "max_gen_toks)")
            prompts = []
            for i in idx:
                ids = self.tok_encode(requests[i].args[0])
                if len(ids) > room:
                    self._on_truncate(len(ids) + max_new, self.max_length)
                prompts.append(ids[-room:])
            sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature", 0.0)) > 0
            new = generate_until(self.model, prompts, decode=self.tok_decode, max_new=max_new,
                                 stop_ids=self._stop_ids(), stop_texts=until,
                                 temperature=float(kwargs.get("temperature", 0.0)) if sample else 0.0,
                                 top_k=kwargs.get("top_k") if sample else None,
                                 top_p=kwargs.get("top_p") if sample else None, batch_size=self.batch_size)
            for i, ids in zip(idx, new, strict=True):
                text = postprocess_generated_text(self.tok_decode(ids), until, None)
                out[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _stop_ids(self) -> list[int]:
        """EOS and the chat closer's id: what the ``generation_config.json`` of our export lists,
        so generation stops where transformers' ``generate`` stops on that export."""
        from ..convert.hf_io import as_template, stop_ids

        return stop_ids(self.tokenizer, as_template(self._our_template()), self.tokenizer.eos_id)

    # chat templates --------------------------------------------------------------------------
    def _our_template(self):
        """Our ChatTemplate when one is known (a run's, or a preset), None for a model whose own
        Jinja template is used."""
        if self.template is not None:
            return self.template
        own = self._transformers_tokenizer() is not None and getattr(self.tokenizer, "chat_template", None)
        return None if own else "chatml"

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The template text lm-eval records with the results (and hashes for its cache)."""
        ours = self._our_template()
        if ours is None:
            return self.tokenizer.chat_template
        from ..convert.hf_io import as_template

        return as_template(ours).to_jinja()

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        """The conversation as the model's chat format renders it; without
        ``add_generation_prompt`` the last (assistant) message is left open, to be continued."""
        ours = self._our_template()
        if ours is None:  # the tokenizer's own Jinja template, rendered by transformers as HFLM does
            return self.tokenizer._tok.apply_chat_template(
                chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=not add_generation_prompt)
        from ..convert.hf_io import as_template

        text, _ = as_template(ours).format_messages(chat_history, add_generation_prompt=add_generation_prompt)
        if not add_generation_prompt and chat_history:
            last = chat_history[-1]["content"].strip()
            text = text[:text.rindex(last) + len(last)] if last else text
        return text


def register() -> None:
    """Make ``"ttk"`` a model name lm-eval knows (done when this module is imported)."""
    if "ttk" not in model_registry:
        model_registry.register("ttk")(TTKLM)


register()
