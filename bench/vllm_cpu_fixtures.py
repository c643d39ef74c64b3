"""Models for the vLLM CPU probe (bench/vllm_cpu_probe.py), made in llmforge's main environment.

In DIR: a tiny tokenizer and a random ~1M-parameter Llama artifact (tests/helpers.py), a random LoRA adapter
artifact on it, a copy fine-tuned for a few seconds until it answers every prompt with one fixed tool call (so
that tool-call parsing has something to parse), and a W4A16 compressed-tensors artifact from `llmforge quantize`.

    .venv/bin/python bench/vllm_cpu_fixtures.py DIR       (from the repository root, PYTHONPATH=.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.helpers

QUESTION = "What is the weather in Paris?"  # the probe asks this one
TOOL_CALL = {"name": "get_weather", "arguments": {"city": "Paris"}}
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip


def tool_call_model(base: Path, out: Path, steps: int = 200) -> None:
    """`base` fine-tuned until, given tools, it answers any question with TOOL_CALL."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmforge.model.loading import save_model_payload
    from tests.helpers import sentences

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    answer = f"<tool_call>{json.dumps(TOOL_CALL)}</tool_call><|im_end|>"
    batch = []
    for question in [QUESTION, *sentences(15, seed=1)]:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tools=[TOOL],
                                               add_generation_prompt=True, tokenize=False)  # fmt: skip
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        batch.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in batch)  # one padded batch: right padding, masked out of the loss
    input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
    labels = torch.tensor([labels + [-100] * (width - len(labels)) for _, labels in batch])
    attention_mask = (labels != -100) | (
        torch.arange(width) < torch.tensor([len(i) for i, _ in batch])[:, None]
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=input_ids, attention_mask=attention_mask.long(), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print(f"tool-call model: final loss {loss.item():.4f}", file=sys.stderr)
    model.eval()
    save_model_payload(model, tokenizer, out)


def main(directory: str) -> None:
    from tests.helpers import (
        random_adapter_artifact,
        sentences,
        tiny_model_artifact,
        tokens_artifact,
        train_tiny_tokenizer,  # fmt: skip
    )

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = root / "tokenizer"
    if not (tokenizer / "tokenizer.json").is_file():
        train_tiny_tokenizer(tokenizer)
    if not (root / "model" / "artifact.json").is_file():
        tiny_model_artifact(root / "model", tokenizer)
    if not (root / "adapter" / "artifact.json").is_file():
        random_adapter_artifact(root / "adapter", root / "model", rank=8)
    if not (root / "toolcall" / "config.json").is_file():
        tool_call_model(root / "model", root / "toolcall")
    if not (root / "tokens" / "artifact.json").is_file():
        tokens_artifact(root / "tokens", tokenizer, sentences(400))
    if not (root / "w4a16" / "artifact.json").is_file():
        subprocess.run([sys.executable, "-m", "llmforge", "quantize", str(root / "model"), "--data",
                        str(root / "tokens"), "--method", "w4a16", "--algorithm", "rtn", "-o", str(root / "w4a16")],
                       check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    print(root)


if __name__ == "__main__":
    main(sys.argv[1])
