"""Run llama.cpp's own converter (convert_hf_to_gguf.py) in this Python, in a process of its own.

    python -m llmforge.model.gguf_converter LLAMA_CPP_DIR [converter arguments...]

One thing is added: the converter names a BPE tokenizer's pre-tokenizer (the regex llama.cpp splits text with)
by hashing how a known published model encodes a test string, so a vocabulary trained on the spot never matches
and it stops ("BPE pre-tokenizer was not recognized"). When it does not recognise the tokenizer, the name in
LLMFORGE_GGUF_PRE is used: llmforge sets it only where it knows the regex (its own tokenizer's is Qwen 2's).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path


def main() -> None:
    llama_cpp = Path(sys.argv[1])
    script = llama_cpp / "convert_hf_to_gguf.py"
    # the converter's own gguf-py first, as the script itself does: writer and converter from one checkout
    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    from conversion import base  # llama.cpp's converter package, beside the script

    recognise = base.TextModel.get_vocab_base_pre
    hint = os.environ.get("LLMFORGE_GGUF_PRE")

    def get_vocab_base_pre(self, tokenizer) -> str:
        try:
            return recognise(self, tokenizer)
        except NotImplementedError:
            if not hint:
                raise
            return hint

    base.TextModel.get_vocab_base_pre = get_vocab_base_pre
    sys.argv = [str(script), *sys.argv[2:]]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
