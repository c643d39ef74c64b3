"""Which tokens of a chat are the assistant's: loss masks for chat fine-tuning with any model's own template.

Most open models' chat templates have no `{% generation %}` markers, so transformers cannot say which tokens the
assistant wrote. This module finds them by rendering: assistant turn k is the text between the conversation up to
turn k rendered with the generation prompt (what the model sees when it starts to answer) and the conversation
through turn k (what it has written when it stops). That needs nothing from the template but the convention every
chat template follows for inference, so it works for templates we have never seen. The span ends on the model's
stop token (its end-of-turn, from the generation config), so the model learns to stop, also where a template writes
that token when the next message starts; text the template adds after it (a newline) is never generated and is not
trained on. Tool calls are trained as the template writes them; a template that drops them is refused.

The sequence trained on is the template's rendering of the whole conversation, tokenized exactly as
`apply_chat_template` does. Where a template renders an earlier turn differently once later turns follow (it drops
reasoning from old turns, say), that turn becomes an example of its own, rendered as the model saw it.

A model without a chat template gets a default, stated by `Template.note`: ChatML when its vocabulary has the
`<|im_start|>`/`<|im_end|>` tokens, otherwise plain `User:`/`Assistant:` turns each ended by the tokenizer's EOS.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge.console import warn
from llmforge.data.tokenizer import CHAT_TEMPLATE as CHATML_TEMPLATE
from llmforge.errors import InputError

# For vocabularies without ChatML tokens: the tokenizer's EOS ends every assistant turn, so generation stops there.
# The space after "Assistant:" belongs to the reply, as it does when the model writes it after the prompt.
PLAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- 'Assistant:' }}"
    "{%- generation %}"
    "{{- ' ' + (message['content'] or '') }}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{%- set fn = call['function'] if call['function'] is defined else call %}"
    "{{- ' <tool_call>' + {'name': fn['name'], 'arguments': fn['arguments']} | tojson + '</tool_call>' }}"
    "{%- endfor %}"
    "{{- eos_token }}"
    "{%- endgeneration %}"
    "{{- '\\n\\n' }}"
    "{%- else %}"
    "{{- message['role'] | capitalize + ': ' + message['content'] + '\\n\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- 'Assistant:' }}{%- endif %}"
)


class ChatMaskError(ValueError):
    """A chat the template cannot render, or one whose assistant turns cannot be found in the rendering."""


@dataclass
class Template:
    """The chat template a fine-tuning run renders with, and where it came from."""

    text: str
    origin: str  # model | file | default-chatml | default-plain

    @property
    def note(self) -> str:
        """One line for the screen saying which template is used."""
        return {
            "model": "chat template: the model's own",
            "file": "chat template: from the file given (it replaces the model's and travels with the output)",
            "default-chatml": "the model has no chat template: using ChatML (<|im_start|>role ... <|im_end|>), "
            "whose tokens its vocabulary has; --chat-template FILE chooses another",
            "default-plain": "the model has no chat template: using plain 'User: ...' / 'Assistant: ...' turns, "
            "each assistant turn ended by the EOS token; --chat-template FILE chooses another",
        }[self.origin]


def resolve_template(tokenizer, template_file: str | Path | None = None) -> Template:
    """The template to train with: a file the user gives, else the model's own, else a default for its vocabulary."""
    if template_file is not None:
        try:
            text = Path(template_file).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{template_file}: cannot read the chat template ({exc})") from None
        try:  # a syntax error or a template for another message format: one line now, not a traceback in TRL
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
                chat_template=text, tokenize=False,
            )  # fmt: skip
        except Exception as exc:
            raise InputError(f"{template_file}: the chat template cannot render a user/assistant chat "
                             f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        return Template(text, "file")
    own = tokenizer.chat_template
    if isinstance(own, dict):  # named variants: the default one is the chat template
        own = own.get("default")
    if own:
        return Template(own, "model")
    if all(_single_token(tokenizer, token) for token in ("<|im_start|>", "<|im_end|>")):
        return Template(CHATML_TEMPLATE, "default-chatml")
    if tokenizer.eos_token is None:
        raise InputError("the model has neither a chat template nor an EOS token to end assistant turns with; "
                         "give one with --chat-template FILE")  # fmt: skip
    return Template(PLAIN_TEMPLATE, "default-plain")


def _single_token(tokenizer, token: str) -> bool:
    token_id = tokenizer.convert_tokens_to_ids(token)
    return isinstance(token_id, int) and token_id != tokenizer.unk_token_id


def stop_token_ids(
    tokenizer, model_dir: str | Path | None = None, template: Template | None = None
) -> list[int]:
    """The tokens that end the model's turn: its generation config's EOS ids (where the end-of-turn token of
    chat models is listed), the tokenizer's EOS, and <|im_end|> for the ChatML default."""
    ids: list[int] = []
    if model_dir is not None and (Path(model_dir) / "generation_config.json").is_file():
        eos = json.loads((Path(model_dir) / "generation_config.json").read_text()).get("eos_token_id")
        ids.extend(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    if template is not None and template.origin == "default-chatml":
        ids.append(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return list(dict.fromkeys(ids))


@dataclass
class Rendered:
    """A conversation as the template renders it, and the character spans the assistant wrote."""

    text: str
    spans: list[tuple[int, int]]
    turns: list[int]  # index in the conversation of each span's assistant message
    unstopped: list[int]  # turns the template ends without a stop token: the model cannot learn to stop there


def render_turns(tokenizer, messages: Sequence[dict], template: str, stop_tokens: Iterable[str],
                 tools: list | None = None) -> list[Rendered]:  # fmt: skip
    """The conversation rendered with the assistant's spans marked: usually one rendering, plus one per turn the
    template renders differently once later turns follow."""
    stop_tokens = [t for t in stop_tokens if t]

    def render(part: Sequence[dict], generation_prompt: bool) -> str:
        if not part:
            return ""
        try:
            return tokenizer.apply_chat_template(list(part), tools=tools, chat_template=template, tokenize=False,
                                                 add_generation_prompt=generation_prompt)  # fmt: skip
        except Exception as exc:  # jinja's TemplateError from raise_exception(), or a template bug
            raise ChatMaskError(f"the chat template cannot render this chat ({exc})") from None

    full = render(messages, False)
    whole = Rendered(full, [], [], [])
    separate = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(messages[:index], True)
        through = render(messages[: index + 1], False)
        start = _common_prefix(before, through)
        end, stopped = _turn_end(through, start, stop_tokens)
        if end <= start:
            raise ChatMaskError(
                f"messages[{index}]: the chat template renders nothing for this assistant turn"
            )
        _check_tool_calls(message, through[start:end], index)
        if _common_prefix(through, full) >= end:
            if not stopped:  # some templates write a turn's end-of-turn token when the next message starts
                stop = next((t for t in stop_tokens if full.startswith(t, end)), None)
                end, stopped = (end + len(stop), True) if stop else (end, False)
            rendered = whole
        else:  # the whole conversation renders this turn otherwise: train on it as the model saw it when writing
            rendered = Rendered(through, [], [], [])
            separate.append(rendered)
        rendered.spans.append((start, end))
        rendered.turns.append(index)
        if not stopped:
            rendered.unstopped.append(index)
    return ([whole] if whole.spans else []) + separate


def _common_prefix(a: str, b: str) -> int:
    """Length of the longest common prefix (a binary search over slice comparisons: chats run long)."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while high - low > 1:  # a[:low] == b[:low] and a[:high] != b[:high]
        middle = (low + high) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle
    return low


def _turn_end(through: str, start: int, stop_tokens: list[str]) -> tuple[int, bool]:
    """Where the assistant's turn ends, and whether on a stop token: after its first stop token; without one, after
    the last text that is not whitespace."""
    found = [(through.find(token, start), token) for token in stop_tokens]
    found = [(position, token) for position, token in found if position >= 0]
    if found:
        position, token = min(found)
        return position + len(token), True
    return max(len(through.rstrip()), start), False


def _check_tool_calls(message: dict, rendered: str, index: int) -> None:
    """A template without tool support drops tool calls silently; training on the remains would teach nonsense."""
    for call in message.get("tool_calls") or []:
        name = (call.get("function") or call).get("name")
        if name and name not in rendered:
            raise ChatMaskError(f"messages[{index}]: the chat template drops tool calls (the call to {name!r} "
                                "is not in its rendering); use a template that renders them (--chat-template)")  # fmt: skip


def tokenize_chat(tokenizer, messages: Sequence[dict], template: str, stop_ids: Iterable[int],
                  tools: list | None = None) -> list[dict[str, list[int]]]:  # fmt: skip
    """`input_ids` and `assistant_masks` (1 on the assistant's tokens, its stop token included) of a chat, tokenized
    as apply_chat_template does (no special tokens added: the template writes them). Usually one example."""
    stop_tokens = tokenizer.convert_ids_to_tokens(list(stop_ids))
    return [encode(tokenizer, r) for r in render_turns(tokenizer, messages, template, stop_tokens, tools)]


def encode(tokenizer, rendered: Rendered) -> dict[str, list[int]]:
    """Tokenize a rendering; a token is the assistant's when it starts inside one of the assistant's spans."""
    encoded = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [
        int(any(start <= first < end for start, end in rendered.spans))
        for first, _ in encoded["offset_mapping"]
    ]
    return {"input_ids": encoded["input_ids"], "assistant_masks": mask}


def record_chat(record: dict[str, Any]) -> tuple[list[dict], list | None]:
    """The messages and tools of a validated chat record (`messages`, or a chat `prompt` + `completion`)."""
    messages = record.get("messages") or (list(record["prompt"]) + list(record["completion"]))
    tools = record.get("tools")
    return messages, json.loads(tools) if isinstance(tools, str) else tools


def chat_examples(records: Sequence[dict], locations: Sequence[str], tokenizer, template: Template,
                  stop_ids: Iterable[int], max_length: int,
                  completion_only: bool = False) -> list[dict[str, list[int]]]:  # fmt: skip
    """Pre-tokenized examples for TRL's SFTTrainer (it builds labels from `assistant_masks`); a record that cannot
    be rendered, or whose assistant tokens all fall beyond max_length, is refused naming its location.
    `completion_only`: in chat prompt/completion records, the assistant turns of the prompt are context only."""
    stop_tokens = tokenizer.convert_ids_to_tokens(list(stop_ids))
    examples, unstopped = [], []
    for record, location in zip(records, locations, strict=True):
        messages, tools = record_chat(record)
        try:
            renderings = render_turns(tokenizer, messages, template.text, stop_tokens, tools)
        except ChatMaskError as exc:
            raise InputError(f"{location}: {exc}") from None
        first = len(record["prompt"]) if completion_only and "messages" not in record else 0
        renderings = [_from_turn(rendered, first) for rendered in renderings]
        for rendered in renderings:
            if not rendered.spans:
                continue  # a separate rendering of a prompt turn: context only
            example = encode(tokenizer, rendered)
            if not any(example["assistant_masks"][:max_length]):
                reason = (f"the assistant's turns start after max_length ({max_length} tokens)"
                          if any(example["assistant_masks"]) else "no assistant tokens")  # fmt: skip
                raise InputError(f"{location}: the loss mask is empty ({reason}); nothing of this record is "
                                 "trained on")  # fmt: skip
            unstopped.extend(f"{location} messages[{turn}]" for turn in rendered.unstopped)
            examples.append(example)
    if unstopped:
        warn(f"{len(unstopped)} assistant turn(s) end without a stop token ({', '.join(stop_tokens)}) in the chat "
             f"template's rendering, first {unstopped[0]}: the model does not learn to stop there")  # fmt: skip
    return examples


def _from_turn(rendered: Rendered, first: int) -> Rendered:
    """The rendering with only the assistant spans of message `first` onwards."""
    kept = [i for i, turn in enumerate(rendered.turns) if turn >= first]
    return Rendered(rendered.text, [rendered.spans[i] for i in kept], [rendered.turns[i] for i in kept],
                    [turn for turn in rendered.unstopped if turn >= first])  # fmt: skip
