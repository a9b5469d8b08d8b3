"""The README's Python examples, run: executable documentation.

Every ```python block of README.md is one test item, executed in README order in one shared
namespace (a later block uses the names an earlier one made), in a temporary working
directory (files the examples write stay out of the repo), offline: HF_HUB_OFFLINE is set
and opening a network connection raises.

A block whose first line is `# needs the Hugging Face hub` runs with a substitute model:
while it runs, `jaxablate.load_gpt2` (and `jaxablate.model.loading.load_gpt2`) given a hub id
returns a small random-weight GPT-2 with GPT-2's own 50,257-token vocabulary (so the real
tokenizer's ids fit), built offline. Shapes in the README's comments describe GPT-2 small;
with the substitute they are smaller, the code is the same. A block without the mark that
asks for a hub id fails, so the mark cannot be forgotten on a machine whose hub cache happens
to hold the weights.

Items are independent of selection: running one block (`-k`) first runs the blocks before it;
a block after a failed one fails naming the block that broke the chain.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import traceback
from pathlib import Path

import pytest

import jaxablate
import jaxablate.model.loading
from jaxablate.model.reference import random_hf_model

README = Path(__file__).resolve().parent.parent / "README.md"
HUB_MARK = "# needs the Hugging Face hub"
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")

# The substitute for hub weights: GPT-2's vocabulary and layout, tiny everywhere else (3 layers
# x 4 heads, d_model 32), so the README's full sweeps (every head pair) take seconds.
SUBSTITUTE = {"n_layer": 3, "n_head": 4, "n_embd": 32, "vocab_size": 50257, "n_positions": 64,
              "bos_token_id": 50256, "eos_token_id": 50256, "initializer_range": 0.2,
              "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


@dataclasses.dataclass(frozen=True)
class Block:
    line: int  # README line of the block's first code line (1-based)
    code: str
    section: str  # the heading the block is under

    @property
    def first_line(self) -> str:
        return next((s.strip() for s in self.code.splitlines() if s.strip()), "")

    @property
    def needs_hub(self) -> bool:
        return self.first_line == HUB_MARK

    @property
    def label(self) -> str:
        """README.md:LINE, the section and the first line of code (after the hub mark)."""
        lines = [s.strip() for s in self.code.splitlines() if s.strip()]
        first = lines[1] if self.needs_hub and len(lines) > 1 else self.first_line
        return f"README.md:{self.line} ({self.section}) {first!r}"


def python_blocks(text: str) -> list[Block]:
    """The ```python fenced blocks of a Markdown text, in order (other fences skipped)."""
    blocks, lines, i, section = [], text.splitlines(), 0, ""
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            if lines[i].startswith("#"):
                section = lines[i].lstrip("#").strip()
            i += 1
            continue
        indent, fence, lang = opening.groups()
        body, j = [], i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            body.append(lines[j].removeprefix(indent))
            j += 1
        if lang.lower() in ("python", "py"):
            blocks.append(Block(line=i + 2, code="\n".join(body) + "\n", section=section))
        i = j + 1
    return blocks


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_readme_has_python_blocks():
    assert BLOCKS, "README.md has no ```python block"
    assert any(block.needs_hub for block in BLOCKS)


def _is_hub_id(source) -> bool:
    """What `load_gpt2` would download: a string that is not "bundled:NAME" nor a path."""
    if not isinstance(source, (str, os.PathLike)):
        return False
    text = os.fspath(source)
    return not (text.startswith(("bundled:", ".", "/", "~")) or os.path.exists(text))


@contextlib.contextmanager
def _offline():
    """No network: HF_HUB_OFFLINE=1 and every internet socket connection refused."""

    def refuse(*args, **kwargs):
        raise OSError("the README test runs offline: no network connection")

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            refuse()
        return real_connect(self, address)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket.socket, "connect", connect)
        yield


def _readme_traceback(error: BaseException) -> str:
    """The traceback from the README block's frame on (this file's frames dropped)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != str(README):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb or error.__traceback__))


def _test_id(block: Block) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", block.section.lower()).strip("-")
    return f"line{block.line}-{slug}"


class Runner:
    """Runs README blocks in order, once each, in one namespace and one working directory."""

    def __init__(self, workdir: Path, substitute_dir: Path):
        self.workdir, self.substitute_dir = workdir, substitute_dir
        self.namespace: dict = {"__name__": "readme"}
        self.done = 0  # blocks run so far
        self.failed: tuple[Block, str] | None = None

    def _loader(self, block: Block, substituted: list[str]):
        real = jaxablate.model.loading.load_gpt2

        def load_gpt2(source, *args, **kwargs):
            if _is_hub_id(source):
                if not block.needs_hub:
                    raise AssertionError(
                        f"load_gpt2({source!r}) needs the Hugging Face hub: mark the block's "
                        f"first line with {HUB_MARK!r}")
                substituted.append(os.fspath(source))
                return real(self.substitute_dir, *args, **kwargs)
            return real(source, *args, **kwargs)

        return load_gpt2

    def _run(self, block: Block) -> None:
        substituted: list[str] = []
        loader = self._loader(block, substituted)
        code = compile("\n" * (block.line - 1) + block.code, str(README), "exec")
        with _offline(), contextlib.chdir(self.workdir), pytest.MonkeyPatch.context() as mp:
            mp.setattr(jaxablate, "load_gpt2", loader)
            mp.setattr(jaxablate.model.loading, "load_gpt2", loader)
            try:
                exec(code, self.namespace)  # noqa: S102 - the README's own examples
            finally:
                if block.needs_hub:
                    ids = ", ".join(repr(s) for s in dict.fromkeys(substituted)) or "no hub id"
                    print(f"\n{block.label}: ran with the substitute model (random weights, "
                          f"{SUBSTITUTE['n_layer']} layers x {SUBSTITUTE['n_head']} heads, "
                          f"d_model {SUBSTITUTE['n_embd']}, GPT-2's 50257-token vocabulary) "
                          f"for load_gpt2 of {ids}")

    def run_through(self, index: int) -> None:
        """Run blocks up to and including `index`; fail naming the block that raised."""
        while self.done <= index and self.failed is None:
            block = BLOCKS[self.done]
            try:
                self._run(block)
            except Exception as error:  # noqa: BLE001 - reported below, README traceback
                self.failed = (block, _readme_traceback(error))
            self.done += 1
        if self.failed is not None:
            block, trace = self.failed
            if block is BLOCKS[index]:
                pytest.fail(f"{block.label} raised:\n{trace}", pytrace=False)
            if BLOCKS.index(block) < index:
                pytest.fail(f"{BLOCKS[index].label} not run: the earlier block {block.label} "
                            f"failed", pytrace=False)


@pytest.fixture(scope="module")
def substitute_dir(tmp_path_factory):
    """The substitute model saved as `save_pretrained` writes it (config + safetensors)."""
    import transformers

    config = transformers.GPT2Config(**SUBSTITUTE)
    config._attn_implementation = "eager"
    folder = tmp_path_factory.mktemp("readme-substitute-gpt2")
    random_hf_model(config, seed=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def runner(tmp_path_factory, substitute_dir):
    return Runner(tmp_path_factory.mktemp("readme-cwd"), substitute_dir)


@pytest.mark.parametrize("index", range(len(BLOCKS)),
                         ids=[_test_id(b) for b in BLOCKS])
def test_readme_block(runner, index, record_property):
    block = BLOCKS[index]
    record_property("readme_block", block.label)
    if block.needs_hub:
        record_property("substitute_model", f"{SUBSTITUTE}")
    runner.run_through(index)


def test_python_blocks_parser():
    text = ("# Title\n```bash\npip install x\n```\n## Use\n```python\na = 1\n```\n"
            "```\nplain output\n```\n- item:\n  ```python\n  b = a + 1\n  ```\n")
    blocks = python_blocks(text)
    assert [(b.line, b.code, b.section) for b in blocks] == [(7, "a = 1\n", "Use"),
                                                              (14, "b = a + 1\n", "Use")]


def test_hub_ids_are_told_from_folders_and_bundled_models(tmp_path):
    assert _is_hub_id("gpt2") and _is_hub_id("openai-community/gpt2")
    assert not _is_hub_id("bundled:induction") and not _is_hub_id(tmp_path)
    assert not _is_hub_id("./my-model") and not _is_hub_id(object())
