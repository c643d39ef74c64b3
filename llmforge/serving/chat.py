"""`llmforge chat`: a terminal conversation with a model artifact (in process) or a running server (--url).

The answer streams to stdout token by token; prompts and notices go to stderr. `/reset` forgets the
conversation (keeping the system prompt), `/exit` (or end of input) leaves.
"""

from __future__ import annotations

import json
import queue
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from llmforge.console import console, log
from llmforge.errors import InputError, LLMForgeError
from llmforge.serving.engine import limit_openmp_spinning

HELP = "/reset forgets the conversation, /exit leaves"


@dataclass
class Settings:
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None


class ServerChat:
    """Talks to an OpenAI-compatible server over HTTP, streaming."""

    def __init__(self, url: str, model: str | None, api_key: str | None):
        import httpx

        self.url = url.rstrip("/")
        self.client = httpx.Client(
            timeout=None, headers={"Authorization": f"Bearer {api_key}"} if api_key else {}
        )
        try:
            listed = self._check(self.client.get(f"{self.url}/models")).json()["data"]
        except httpx.HTTPError as exc:
            raise InputError(f"{self.url}: no server answers there ({exc})") from None
        names = [m["id"] for m in listed]
        if model is not None and model not in names:
            raise InputError(f"{self.url} does not serve {model!r}; it serves {', '.join(names)}")
        self.model = model or names[0]

    def _check(self, response):
        if response.status_code >= 400:
            response.read()
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text
            raise LLMForgeError(f"{self.url}: {response.status_code} {message}")
        return response

    def reply(self, messages: list[dict[str, str]], settings: Settings) -> Iterator[str]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "stream": True}
        body.update({k: v for k, v in vars(settings).items() if v is not None})
        with self.client.stream("POST", f"{self.url}/chat/completions", json=body) as response:
            self._check(response)
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    raise LLMForgeError(chunk["error"]["message"])
                for choice in chunk.get("choices", []):
                    if choice["delta"].get("content"):
                        yield choice["delta"]["content"]


class LocalChat:
    """Loads the artifact and generates in this process with the embedded server's engine (llama.cpp's for a GGUF)."""

    def __init__(self, model: str):
        from llmforge.serving import models
        from llmforge.serving.embedded import build_engine

        limit_openmp_spinning()
        serving = models.plan(model, None, {})
        self.model = serving.models[0]
        log(f"loading {model}")
        loaded = build_engine(serving, max_batch_size=1)
        self.engine, self.tokenizer, self.defaults = loaded.engine, loaded.tokenizer, loaded.defaults
        if not self.model.can_chat(self.tokenizer):
            raise InputError(f"{model}: no chat template (a base model?), which chat needs; `llmforge serve` it "
                             "and send text to /v1/completions, or train it to chat with `llmforge sft`")  # fmt: skip
        self.engine.start()

    def reply(self, messages: list[dict[str, str]], settings: Settings) -> Iterator[str]:
        from llmforge.serving.engine import GenerationRequest, SamplingParams

        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                                  chat_template=self.model.chat_template)  # fmt: skip
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        room = self.engine.max_model_len - len(ids)
        if room < 1:
            raise LLMForgeError("the conversation no longer fits the context; /reset to start over")
        params = SamplingParams(
            max_tokens=min(settings.max_tokens or self.defaults.max_tokens, room),
            temperature=self.defaults.temperature if settings.temperature is None else settings.temperature,
            top_p=self.defaults.top_p, seed=settings.seed, top_k=self.defaults.top_k, min_p=self.defaults.min_p,
            repetition_penalty=self.defaults.repetition_penalty,
        )  # fmt: skip
        events: queue.Queue = queue.Queue()
        self.engine.submit(GenerationRequest(ids, params, on_event=events.put, adapter=self.model.adapter))
        while True:
            event = events.get()
            if event.text:
                yield event.text
            if event.finish_reason:
                return

    def close(self) -> None:
        self.engine.stop()


def repl(model: str | None, url: str | None, model_name: str | None, api_key: str | None, system: str | None,
         settings: Settings) -> None:  # fmt: skip
    if (model is None) == (url is None):
        raise InputError("chat needs a model artifact or --url of a running server (one of the two)")
    backend = ServerChat(url, model_name, api_key) if url else LocalChat(model)
    first = [{"role": "system", "content": system}] if system else []
    messages = list(first)
    interactive = sys.stdin.isatty()
    log(f"chatting with {backend.model if url else model} ({HELP})")
    try:
        while True:
            if interactive:
                console.print("[bold cyan]you>[/] ", end="")
            line = sys.stdin.readline()
            if not line or line.strip() == "/exit":
                break
            text = line.rstrip("\n")
            if text.strip() == "/reset":
                messages = list(first)
                log("[dim]conversation reset[/]")
                continue
            if not text.strip():
                continue
            messages.append({"role": "user", "content": text})
            answer = []
            for piece in backend.reply(messages, settings):
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            messages.append({"role": "assistant", "content": "".join(answer)})
    finally:
        if isinstance(backend, LocalChat):
            backend.close()
