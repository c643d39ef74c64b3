"""One choice's answer, built from the engine's events: the stream's chunk entries as they come, and the whole
choice of a non-streaming answer (the same entries, merged), for chat and for completions."""

from __future__ import annotations

from typing import Any

from llmforge.serving.engine import Event
from llmforge.serving.jobs import Choice, Job
from llmforge.serving.logprobs import CompletionLogprobs, TokenTexts, chat_entries
from llmforge.serving.tools import ToolCall, ToolStream


class ChatAnswer:
    def __init__(self, index: int, job: Job, texts: TokenTexts):
        self.index, self.job, self.texts = index, job, texts
        self.tools = ToolStream(job.tool_format) if job.tool_format else None
        self.content, self.calls, self.logprobs = "", [], []
        self.final: Event | None = None
        self.finish_reason: str | None = None

    def feed(self, event: Event) -> list[dict[str, Any]]:
        """The chunk entries (`choices` items) this event makes."""
        content, calls = self.tools.feed(event.text) if self.tools else (event.text, [])
        if event.finish_reason and self.tools:
            more, last = self.tools.finish()
            content, calls = content + more, calls + last
        entries = []
        logprobs = chat_entries(self.texts, event.logprobs) if self.job.logprobs is not None else None
        if content or logprobs:
            self.content += content
            self.logprobs += logprobs or []
            entries.append(
                self._entry({"content": content}, logprobs={"content": logprobs} if logprobs else None)
            )
        for call in calls:
            entries += self._call_deltas(len(self.calls), call)
            self.calls.append(call)
        if event.finish_reason:
            self.final = event
            self.finish_reason = (
                "tool_calls" if self.calls and event.finish_reason == "stop" else event.finish_reason
            )
            entries.append(self._entry({}, finish=self.finish_reason))
        return entries

    def _entry(self, delta: dict[str, Any], finish: str | None = None, logprobs=None) -> dict[str, Any]:
        return {"index": self.index, "delta": delta, "finish_reason": finish, "logprobs": logprobs}

    def _call_deltas(self, position: int, call: ToolCall) -> list[dict[str, Any]]:
        """As OpenAI streams a call: its id, type and name with empty arguments, then the arguments."""
        head = {
            "index": position,
            "id": call.id,
            "type": "function",
            "function": {"name": call.name, "arguments": ""},
        }
        body = {"index": position, "function": {"arguments": call.arguments}}
        return [self._entry({"tool_calls": [head]}), self._entry({"tool_calls": [body]})]

    def choice(self) -> dict[str, Any]:
        """The whole choice of a non-streaming answer."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            message["content"] = self.content or None
            message["tool_calls"] = [call.openai() for call in self.calls]
        logprobs = {"content": self.logprobs, "refusal": None} if self.job.logprobs is not None else None
        return {
            "index": self.index,
            "message": message,
            "finish_reason": self.finish_reason,
            "logprobs": logprobs,
        }


class CompletionAnswer:
    def __init__(self, index: int, job: Job, choice: Choice, texts: TokenTexts):
        self.index, self.choice_, self.started = index, choice, False
        self.logprobs = CompletionLogprobs(texts) if job.logprobs is not None else None
        self.text, self.all_logprobs = (
            "",
            {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []},
        )
        self.final: Event | None = None

    def feed(self, event: Event) -> list[dict[str, Any]]:
        text = event.text
        if not self.started:  # echo: the prompt (and its tokens' logprobs) first
            self.started = True
            if self.choice_.echo is not None:
                text = self.choice_.echo + text
                if self.logprobs is not None:
                    self.logprobs.add(event.prompt_logprobs or [None], self.choice_.prompt_ids)
        if self.logprobs is not None:
            self.logprobs.add(event.logprobs)
        logprobs = self.logprobs.take() if self.logprobs is not None else None
        self.text += text
        if logprobs:
            for key, values in logprobs.items():
                self.all_logprobs[key] += values
        if event.finish_reason:
            self.final = event
        if not (text or event.finish_reason or (logprobs and logprobs["tokens"])):
            return []
        return [
            {"index": self.index, "text": text, "finish_reason": event.finish_reason, "logprobs": logprobs}
        ]

    def choice(self) -> dict[str, Any]:
        logprobs = self.all_logprobs if self.logprobs is not None else None
        return {"index": self.index, "text": self.text, "finish_reason": self.final.finish_reason,
                "logprobs": logprobs}  # fmt: skip


def answers(job: Job, chat: bool, texts: TokenTexts) -> list[ChatAnswer | CompletionAnswer]:
    if chat:
        return [ChatAnswer(i, job, texts) for i in range(len(job.choices))]
    return [CompletionAnswer(i, job, choice, texts) for i, choice in enumerate(job.choices)]


def usage(job: Job, finals: list[Event], prefix_caching: bool = False) -> dict[str, Any]:
    """OpenAI's usage; with prefix caching, also how many prompt tokens came from the cache (each distinct prompt
    counted once, as in prompt_tokens: its first choice's)."""
    completion = sum(e.completion_tokens for e in finals)
    found = {"prompt_tokens": job.prompt_tokens, "completion_tokens": completion,
             "total_tokens": job.prompt_tokens + completion}  # fmt: skip
    if prefix_caching:
        cached: dict[tuple[int, ...], int] = {}
        for choice, final in zip(job.choices, finals, strict=True):
            cached.setdefault(tuple(choice.prompt_ids), final.cached_tokens)
        found["prompt_tokens_details"] = {"cached_tokens": sum(cached.values())}
    return found
