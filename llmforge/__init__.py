"""llmforge: from a raw web crawl to a served language model, one artifact at a time."""

import logging

__version__ = "0.1.0"

# torchao (pulled in by transformers and llm-compressor) registers enums with torch's pytree on import, and torch
# logs a deprecation warning for each in every process: noise on every stage's stderr, nothing a user can act on.
logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
# bitsandbytes (imported by peft when installed) first asks the model hub for a CPU kernel on CPUs with AVX512-bf16
# and warns when it cannot have it (always, offline); its own CPU code then runs, so the warning is noise too.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
