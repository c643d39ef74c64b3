"""A reward model as a GRPO reward: `--reward runs/rm[:WEIGHT]` scores each completion with a model trained by
`llmforge reward` (or any Hugging Face sequence-classification model with one output).

The model reads the exact token sequence TRL's RewardTrainer trained it on (`reward_input_ids`): a chat rendered
whole by the reward model's own chat template, or for text the prompt, the answer and the EOS token. TRL 1.16's
GRPOTrainer scores a reward model on text without that EOS token, where the score head never read a score during
training; llmforge calls the model itself, through the same function `llmforge reward` checks its records with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llmforge.errors import InputError

SCORE_BATCH = 16  # completions scored per forward pass


def reward_input_ids(tokenizer, prompt: str | list[dict] | None, answer: str | list[dict]) -> list[int]:
    """The tokens a reward model scores for `answer` to `prompt` (no prompt: the answer holds the whole
    conversation or text), as RewardTrainer tokenizes a chosen or rejected answer: chats through the chat
    template, text with the EOS token appended unless it ends with it."""
    if isinstance(answer, list):
        messages = (prompt or []) + answer
        return list(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
    text = (prompt or "") + answer
    if not text.endswith(tokenizer.eos_token):
        text += tokenizer.eos_token
    return list(tokenizer(text=text)["input_ids"])


def check_reward_model(path: str | Path, chats: bool = False) -> None:
    """A directory holding a reward model: a sequence-classification config with one output (read, not loaded);
    for `chats` (chat prompts), a chat template to render them with."""
    directory = Path(path)
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise InputError(f"--reward {path}: not a reward model directory (no config.json); a reward model is made "
                         "by `llmforge reward` or is a Hugging Face sequence-classification model")  # fmt: skip
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    if not any(name.endswith("ForSequenceClassification") for name in architectures):
        raise InputError(f"--reward {path}: {', '.join(architectures) or 'the model'} is not a sequence-"
                         "classification model; a reward model scores with a one-output head (`llmforge reward` "
                         "trains one)")  # fmt: skip
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if labels != 1:
        raise InputError(f"--reward {path}: the model has {labels} outputs; a reward model has one score")
    if chats and not has_chat_template(directory):
        raise InputError(f"--reward {path}: the prompts are chats, and the reward model's tokenizer has no chat "
                         "template to render them with")  # fmt: skip


def has_chat_template(directory: Path) -> bool:
    """The tokenizer files in `directory` carry a chat template (its own file, or in tokenizer_config.json)."""
    if (directory / "chat_template.jinja").is_file():
        return True
    config = directory / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


class RewardModel:
    """Scores completions with a reward model on this process's device (bf16 where training runs in bf16)."""

    def __init__(self, path: str | Path) -> None:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from llmforge import machine

        check_reward_model(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if machine.bf16_supported() else torch.float32
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype).eval()
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = None

    def __call__(self, prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
        import torch

        if self.device is None:  # on the process's own device, beside the policy
            from llmforge import machine

            self.device = machine.process_device()
            self.model.to(self.device)
        scores: list[float] = []
        for start in range(0, len(completions), SCORE_BATCH):
            batch = [reward_input_ids(self.tokenizer, prompt, completion)
                     for prompt, completion in zip(prompts[start:start + SCORE_BATCH],
                                                   completions[start:start + SCORE_BATCH], strict=True)]  # fmt: skip
            padded = self.tokenizer.pad(
                {"input_ids": batch}, padding=True, padding_side="right", return_tensors="pt"
            )
            with torch.inference_mode():
                logits = self.model(**padded.to(self.device)).logits
            scores.extend(logits[:, 0].float().tolist())
        return scores
