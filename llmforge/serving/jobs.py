"""From a validated request body to a `Job` for the engine: prompts through the chat template (tools included),
sampling settings, `n` choices per prompt, logprobs, echo, and the grammar of `response_format` or a forced
tool call. Every problem is an APIError (a 4xx the client can act on)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llmforge.serving.engine import SamplingParams
from llmforge.serving.models import ServedModel
from llmforge.serving.protocol import APIError, ChatRequest, CompletionRequest, Params, message_text
from llmforge.serving.tools import call_grammar, template_messages

if TYPE_CHECKING:
    from llmforge.serving.openai_api import ServerState

SEED_SPAN = 2**64  # torch seeds are 64-bit: the n choices of one seeded request use seed, seed+1, ...


@dataclass
class Choice:
    """One engine request: a prompt and its settings (the constraint is its own: a grammar matcher has state)."""

    prompt_ids: list[int]
    params: SamplingParams
    echo: str | None = None  # completions with echo: the prompt's text, sent before the answer


@dataclass
class Job:
    target: ServedModel
    choices: list[Choice]
    meta: dict[str, Any]  # id, created, model, system_fingerprint: the same in every chunk
    include_usage: bool  # streaming: a last chunk with the usage
    prompt_tokens: int  # each distinct prompt counted once, however many choices it has
    logprobs: int | None = None  # None: no logprobs; k: the k most likely alternatives of each token
    tool_format: str | None = None  # parse tool calls from the answers in this format


def served(state: ServerState, name: str) -> ServedModel:
    if name not in state.models:
        raise APIError(404, f"The model '{name}' does not exist; served: {', '.join(state.models)}",
                       param="model", code="model_not_found")  # fmt: skip
    return state.models[name]


def meta(prefix: str, target: ServedModel) -> dict[str, Any]:
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": target.name,
            "system_fingerprint": target.fingerprint}  # fmt: skip


def wants_usage(body: Params) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def chat_job(state: ServerState, body: ChatRequest) -> Job:
    """The conversation through the model's own chat template (with the tools, when the call may use them)."""
    target = served(state, body.model)
    if not target.can_chat(state.tokenizer):
        raise APIError(400, "this model has no chat template (a base model?): send text to /v1/completions",
                       param="messages")  # fmt: skip
    messages = []
    for m in body.messages:
        message = {**m.model_dump(exclude_none=True, exclude={"content"}), "content": message_text(m)}
        messages.append(message)
    choice = body.tool_choice or "auto"
    use_tools = bool(body.tools) and choice != "none"
    tools = [t.model_dump(exclude_none=True) for t in body.tools or []] if use_tools else None
    fmt = None
    if use_tools:
        fmt = state.tool_format
        if fmt is None:
            raise APIError(400, "this model's chat template renders no tools (or in a format the server cannot "
                                "read back: hermes, llama3_json, mistral)", param="tools",
                           code="unsupported_parameter")  # fmt: skip
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            if choice.get("type") != "function" or name not in {t["function"]["name"] for t in tools}:
                raise APIError(400, f"tool_choice names no tool of this request: {choice}", param="tool_choice",
                               code="invalid_value")  # fmt: skip
    fits(state, sum(len(message_text(m) or "") for m in body.messages), "messages")
    try:
        text = state.tokenizer.apply_chat_template(template_messages(messages), tools=tools, add_generation_prompt=True,
                                                   tokenize=False, chat_template=target.chat_template)  # fmt: skip
    except Exception as exc:  # the template itself rejects the conversation (roles out of order...)
        raise APIError(400, f"the chat template rejected the messages: {exc}", param="messages") from None
    ids = state.tokenizer(text, add_special_tokens=False)["input_ids"]
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    params = sampling(state, body, len(ids), body.max_completion_tokens or body.max_tokens, "messages")
    params = replace(params, logprobs=logprobs, skip_special_tokens=fmt != "mistral")

    def constraint():
        if use_tools and choice != "auto":
            grammar = call_grammar(
                fmt, tools, choice, state.grammars.marker, body.parallel_tool_calls is not False
            )
            return state.grammars.lark(grammar, "tool_choice")
        return state.grammars.response_format(body.response_format or {})

    choices = [Choice(ids, replace(p, constraint=constraint())) for p in copies(params, body.n or 1)]
    return Job(target, choices, meta("chatcmpl", target), wants_usage(body), len(ids), logprobs, fmt)


def fits(state: ServerState, characters: int, param: str) -> None:
    """Refuse a text too long for the context whatever its tokens, before tokenizing it: no token covers more than
    `state.longest_token` characters, so it has at least characters / longest_token tokens."""
    limit = state.engine.max_model_len
    if characters > limit * state.longest_token:
        raise APIError(400, f"This model's maximum context length is {limit} tokens; the {param} has {characters:,} "
                            f"characters, more than {limit} tokens of at most {state.longest_token} characters hold",
                       param=param, code="context_length_exceeded")  # fmt: skip


def completion_job(state: ServerState, body: CompletionRequest) -> Job:
    """`n` choices per prompt (a string, token ids, or a list of either), prompt-major as OpenAI orders them."""
    target = served(state, body.model)
    prompt = body.prompt
    prompts = [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) else prompt
    if not prompts:
        raise APIError(400, "prompt must not be empty", param="prompt", code="invalid_value")
    vocab = state.engine.vocab_size
    choices, total = [], 0
    for index, p in enumerate(prompts):
        if not p:
            raise APIError(400, f"prompt {index} is empty", param="prompt", code="invalid_value")
        if isinstance(p, str):
            fits(state, len(p), "prompt")
            ids, text = state.tokenizer(p)["input_ids"], p
        else:
            if any(not 0 <= t < vocab for t in p):
                raise APIError(400, f"prompt {index} holds token ids outside the vocabulary (0..{vocab - 1})",
                               param="prompt", code="invalid_value")  # fmt: skip
            ids, text = list(p), state.tokenizer.decode(p)
        total += len(ids)
        params = sampling(state, body, len(ids), body.max_tokens, "prompt")
        params = replace(params, logprobs=body.logprobs,
                         prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None)  # fmt: skip
        choices += [Choice(ids, p, text if body.echo else None) for p in copies(params, body.n or 1)]
    return Job(target, choices, meta("cmpl", target), wants_usage(body), total, body.logprobs)


def copies(params: SamplingParams, n: int) -> list[SamplingParams]:
    """n settings for n choices: a seeded request's choices differ (seed, seed+1, ...) and are reproducible."""
    if params.seed is None:
        return [params] * n
    return [replace(params, seed=(params.seed + i) % SEED_SPAN) for i in range(n)]


def sampling(state: ServerState, body: Params, prompt_tokens: int, max_tokens: int | None,
             prompt_param: str) -> SamplingParams:  # fmt: skip
    """The engine's settings for one prompt: the request's, else the artifact's generation config; the context
    length checked."""
    limit = state.engine.max_model_len
    if prompt_tokens + 1 > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens; the prompt has "
                            f"{prompt_tokens}", param=prompt_param, code="context_length_exceeded")  # fmt: skip
    if max_tokens is not None and prompt_tokens + max_tokens > limit:
        raise APIError(400, f"This model's maximum context length is {limit} tokens; you requested "
                            f"{prompt_tokens + max_tokens} ({prompt_tokens} in the prompt, {max_tokens} to "
                            f"generate)", param="max_tokens", code="context_length_exceeded")  # fmt: skip
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise APIError(400, "stop sequences must not be empty", param="stop", code="invalid_value")
    defaults = state.defaults
    return SamplingParams(
        max_tokens=max_tokens or min(defaults.max_tokens, limit - prompt_tokens),
        temperature=defaults.temperature if body.temperature is None else body.temperature,
        top_p=defaults.top_p if body.top_p is None else body.top_p,
        stop=stop, seed=None if body.seed is None else body.seed % SEED_SPAN, ignore_eos=body.ignore_eos,
        min_tokens=body.min_tokens,
        top_k=defaults.top_k if body.top_k is None else max(body.top_k, 0),
        min_p=defaults.min_p if body.min_p is None else body.min_p,
        repetition_penalty=defaults.repetition_penalty if body.repetition_penalty is None else body.repetition_penalty,
        presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
    )  # fmt: skip
