"""README.md runs: every ```python block, every ```yaml run config and every `ttk` command line.

The Python blocks are executed top to bottom in one namespace (the README presents them as one
script), in a temporary folder holding small generated stand-ins for the files the README names
(``data.txt``, ``a.txt``, ``b.txt``, ``stories.jsonl``, ``chats.jsonl``). The only change made to
the code is ``CAPS``: a keyword argument ``name=N`` (any spacing) whose ``N`` is above the cap runs
with the cap, so a 6-layer, 3000-step example runs as a 2-layer, 4-step one. Every cap must be used
(a cap that no longer matches anything is an error, so the table stays minimal).

A block that cannot run offline is marked in the README by ``<!-- readme-test: skip (reason) -->``
on the line before it; at most ``MAX_SKIPPED`` blocks may be marked.
"""

from __future__ import annotations

import io
import json
import random
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from transformer_toolkit.cli import build_parser, main
from transformer_toolkit.cli import config as C

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_SKIPPED = 3
SKIP_MARK = re.compile(r"<!--\s*readme-test:\s*skip\s*\((?P<why>[^)]+)\)\s*-->")

# README keyword -> the largest value run here. dim 48 keeps every README head count (4, 6, 8)
# a divisor with an even head_dim; max_seq 64 is not below seq_len 64.
CAPS = {
    "dim": 48, "hidden_dim": 96, "n_layers": 2, "max_seq": 64,
    "seq_len": 64, "batch_size": 4,
    "max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2,
    "max_new": 8,
}

# `ttk train` / `ttk sft` of the quickstart, run at a tiny size: the README's arguments plus these.
QUIET = ["--train.progress", "none", "--train.plot", "false"]
TINY_TRAIN = ["--train.max_steps", "2", "--data.max_mb", "0.1", "--data.vocab_size", "300", "--model.dim", "32",
              "--model.n_layers", "1", "--max-new", "4", *QUIET]
TINY_SFT = ["--train.max_steps", "3", "--train.eval_every", "3", "--train.eval_iters", "1", "--data.n_samples", "120",
            "--data.n_eval", "3", *QUIET]
CHAT_INPUT = "reverse: cat dog\nadd: 1 + 2\n"


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    skip: str | None  # the reason given by a skip mark, or None


def readme_blocks(text: str | None = None) -> list[Block]:
    """Fenced code blocks of README.md (or ``text``), with the skip mark (if any) on the line before each."""
    lines = (README.read_text(encoding="utf-8") if text is None else text).splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"^```(\w*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, j = i, i + 1
        while j < len(lines) and not lines[j].startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = SKIP_MARK.search(prev)
        blocks.append(Block(m.group(1), "\n".join(lines[start + 1: j]), start + 1, mark and mark.group("why")))
        i = j + 1
    return blocks


def shrink(code: str, used: set[str]) -> str:
    """The block with every ``name=N`` above its cap lowered to the cap (names recorded in ``used``)."""
    def cap(m: re.Match) -> str:
        name, eq, value = m.group(1), m.group(2), int(m.group(3).replace("_", ""))
        if value <= CAPS[name]:
            return m.group(0)
        used.add(name)
        return f"{name}{eq}{CAPS[name]}"

    names = "|".join(map(re.escape, CAPS))
    return re.sub(rf"(?<![\w.])({names})(\s*=\s*)(\d[\d_]*)(?![\w.])", cap, code)


def test_skip_mark_applies_to_the_next_block_only():
    text = "<!-- readme-test: skip (needs network) -->\n\n```python\npush()\n```\n\n```python\nx = 1\n```\n"
    blocks = readme_blocks(text)
    assert [(b.lang, b.code, b.skip) for b in blocks] == [("python", "push()", "needs network"),
                                                          ("python", "x = 1", None)]


def test_shrink_lowers_only_capped_keywords_above_the_cap():
    used: set[str] = set()
    code = "f(dim = 384, hidden_dim=1536, latent_dim=64, max_new=5, x.dim=999, n_layers=1_000)"
    assert shrink(code, used) == "f(dim = 48, hidden_dim=96, latent_dim=64, max_new=5, x.dim=999, n_layers=2)"
    assert used == {"dim", "hidden_dim", "n_layers"}


def write_inputs(folder: Path) -> None:
    """Small deterministic stand-ins for the files the README reads."""
    rng = random.Random(0)
    words = ("the model reads a token and writes the next one while the loss falls slowly over many steps "
             "def class import return value data train eval tokenizer corpus window batch layer head").split()

    def text(n_lines: int) -> str:
        return "\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(4, 14))) + rng.choice(".,:;!?")
                         for _ in range(n_lines)) + "\n"

    (folder / "data.txt").write_text(text(3000), encoding="utf-8")
    (folder / "a.txt").write_text(text(600), encoding="utf-8")
    (folder / "b.txt").write_text(text(600), encoding="utf-8")
    with open(folder / "stories.jsonl", "w", encoding="utf-8") as f:
        for _ in range(200):
            f.write(json.dumps({"text": text(5)}) + "\n")
    with open(folder / "chats.jsonl", "w", encoding="utf-8") as f:
        for i in range(60):
            f.write(json.dumps({"prompt": f"echo {i}", "response": str(i)}) + "\n")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread, and on a shared machine two threads per process
    oversubscribe the cores (measured: 58 s instead of 6 s for the Python blocks under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_inputs(tmp_path)
    torch.manual_seed(0)
    namespace: dict = {"__name__": "__readme__"}
    used: set[str] = set()
    ran, skipped = 0, []
    for block in readme_blocks():
        if block.lang != "python":
            continue
        if block.skip:
            skipped.append((block.line, block.skip))
            continue
        code = compile(shrink(block.code, used), f"README.md (python block at line {block.line})", "exec")
        exec(code, namespace)  # a failure's traceback names the README line of the block
        ran += 1
    assert ran >= 8, f"only {ran} python blocks ran; did the README lose its examples?"
    assert len(skipped) <= MAX_SKIPPED, f"too many README blocks skipped: {skipped}"
    assert used == set(CAPS), f"caps that match nothing in the README (remove them): {set(CAPS) - used}"
    # the README's claims hold at the tiny size: the fine-tuned model and its session exist and answered
    assert namespace["session"].history == [], "the README's session.reset() should leave no history"
    assert (tmp_path / "checkpoints" / "best.pt").is_file() and (tmp_path / "sft_checkpoints" / "best.pt").is_file()


def test_yaml_blocks_are_valid_run_configs():
    blocks = [b for b in readme_blocks() if b.lang == "yaml"]
    assert blocks
    for b in blocks:
        raw = yaml.safe_load(b.code)
        run = C.resolve(raw, "dpo" if "dpo" in raw else "train")
        assert run["model"].dim > 0, f"README line {b.line}"


def ttk_command_lines() -> list[tuple[int, list[str]]]:
    """(README line, argv) of every `ttk` command in a ```bash block, including piped ones."""
    out = []
    for b in readme_blocks():
        if b.lang != "bash":
            continue
        for k, line in enumerate(b.code.splitlines()):
            words = shlex.split(line, comments=True)
            segment: list[str] = []
            for w in [*words, "|"]:
                if w != "|":
                    segment.append(w)
                    continue
                if segment and segment[0] == "ttk":
                    out.append((b.line + 1 + k, segment[1:]))
                segment = []
    return out


def check_parses(argv: list[str]) -> None:
    """Parse ``argv`` like ``ttk`` does; the dotted overrides of train/sft/dpo/grpo are validated against
    the resolved run config (the same checks as a real run, before any data is read)."""
    ap = build_parser()
    args, extra = ap.parse_known_args(argv)
    if args.command is None:
        args, extra = ap.parse_known_args(["train", *argv])
    overrides = C.parse_overrides(extra)
    if args.command == "compare":  # the same checks as ttk compare makes before reading any data
        from transformer_toolkit.cli.compare import plan

        plan(args, overrides)
    elif args.command in ("train", "sft", "dpo", "grpo"):
        default = {"sft": "sft", "dpo": "dpo", "grpo": "grpo"}.get(args.command, "quickstart")
        raw = C.merge(C.read_yaml(args.config or default), overrides)
        C.resolve(raw, args.command)
    else:
        assert not overrides, f"ttk {args.command} takes no overrides"


def test_every_ttk_command_line_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recipes are found without the repository's folder
    commands = ttk_command_lines()
    assert len(commands) >= 8
    seen = set()
    for line, argv in commands:
        try:
            check_parses(argv)
        except SystemExit as e:  # argparse reports a bad command line by exiting
            pytest.fail(f"README line {line}: ttk {' '.join(argv)} does not parse (exit {e.code})")
        except (ValueError, FileNotFoundError) as e:
            pytest.fail(f"README line {line}: ttk {' '.join(argv)}: {e}")
        seen.add(argv[0] if argv else "train")
    assert {"tokenizer", "prepare", "train", "sft", "dpo", "generate", "chat", "eval"} <= seen


def test_inline_ttk_mentions_name_real_commands():
    text = README.read_text(encoding="utf-8")
    valid = set(build_parser()._subparsers._group_actions[0].choices)  # the registered subcommands
    for span in re.findall(r"`(ttk(?: [^`]*)?)`", text):
        words = span.split()
        first = next((w for w in words[1:] if not w.startswith("-")), None)
        if first is not None and not first.isupper():  # FILES / COMMAND style placeholders aside
            assert first in valid, f"README mentions `{span}`: {first!r} is not a ttk command"


def test_quickstart_runs(tmp_path, monkeypatch, capsys):
    """The four quickstart commands, verbatim, in order; train and sft with tiny-size overrides."""
    monkeypatch.chdir(tmp_path)
    lines = README.read_text(encoding="utf-8").splitlines()
    heading = lines.index("## Quickstart") + 1
    block = next(b for b in readme_blocks() if b.lang == "bash" and b.line > heading)
    end = block.line + len(block.code.splitlines())
    quick = [argv for line, argv in ttk_command_lines() if block.line < line <= end]
    assert [a[0] for a in quick] == ["train", "generate", "sft", "chat"], quick
    outputs = {}
    for argv in quick:
        extra = {"train": TINY_TRAIN, "sft": TINY_SFT}.get(argv[0], [])
        if argv[0] == "chat":
            monkeypatch.setattr(sys, "stdin", io.StringIO(CHAT_INPUT))
        rc = main([*argv, *extra])
        out = capsys.readouterr()
        assert rc == 0, f"ttk {' '.join(argv)}: {out.err}"
        outputs[argv[0]] = out.out
    assert "--- 'def '" in outputs["train"] and (tmp_path / "runs" / "quickstart" / "config.yaml").is_file()
    assert outputs["generate"].startswith("def ")
    assert "exact match:" in outputs["sft"] and "on 3 held-out prompts" in outputs["sft"]
    assert len(outputs["chat"].splitlines()) == len(CHAT_INPUT.splitlines())  # one reply per piped line
