"""Assistant-token masks from the models' own chat templates: exactly the replies and the end-of-turn token.

Templates: SmolLM2-135M-Instruct's own (from its GGUF, with its real tokenizer), and the original templates TRL ships
for Qwen2.5, Qwen3, Llama 3 / 3.1, Gemma 3, Phi-3.5 and Cohere2 (trl/chat_templates/*.jinja, the files TRL compares
tokenizers against). Their real tokenizers are not installed, so each family gets a stand-in with its special tokens
added: SmolLM2's byte-level BPE for the byte-level families (Qwen, Llama 3, Cohere), and a small BPE with
SentencePiece-style `▁` spaces trained here for the SentencePiece families (Gemma, Phi-3).
"""

from __future__ import annotations

import pytest
from families import CHATS, FAMILIES, TOOL_CHAT, TOOLS, family_tokenizer, sentencepiece_style
from tokenizers import AddedToken
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from llmforge.data.chat_masks import (
    ChatMaskError,
    Template,
    chat_examples,
    resolve_template,
    stop_token_ids,
    tokenize_chat,
)
from llmforge.errors import InputError

pytestmark = pytest.mark.xdist_group("smollm2")


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2):
    return AutoTokenizer.from_pretrained(smollm2)


def masked_runs(tokenizer, example: dict) -> list[str]:
    """The decoded stretches of consecutive masked tokens."""
    runs, current = [], []
    for token, masked in zip(example["input_ids"], example["assistant_masks"], strict=True):
        if masked:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def replies(chat: list[dict]) -> list[str]:
    return [m["content"] for m in chat if m["role"] == "assistant"]


@pytest.mark.parametrize("chat", list(CHATS))
def test_smollm2_masks_are_the_replies_and_im_end(smollm2, smollm2_tokenizer, chat):
    tokenizer = smollm2_tokenizer
    template = resolve_template(tokenizer)
    assert template.origin == "model" and "{% generation %}" not in template.text  # no markers to rely on
    stops = stop_token_ids(tokenizer, smollm2, template)
    assert tokenizer.convert_ids_to_tokens(stops) == ["<|im_end|>"]
    [example] = tokenize_chat(tokenizer, CHATS[chat], template.text, stops)
    assert masked_runs(tokenizer, example) == [reply + "<|im_end|>" for reply in replies(CHATS[chat])]
    # the sequence trained on is exactly what the model's template renders for inference
    assert (
        example["input_ids"]
        == tokenizer.apply_chat_template(CHATS[chat], tokenize=True, return_dict=True)["input_ids"]
    )


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("chat", list(CHATS))
def test_family_masks_are_the_replies_and_end_of_turn(smollm2, family, chat):
    tokenizer, stops = family_tokenizer(family, smollm2)
    spec = FAMILIES[family]
    messages = CHATS[chat]
    examples = tokenize_chat(tokenizer, messages, tokenizer.chat_template, stops)
    found = [run for example in examples for run in masked_runs(tokenizer, example)]
    assert sorted(found) == sorted(spec.reply_prefix + reply + spec.end for reply in replies(messages))
    if len(examples) == 1:
        expected = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        assert examples[0]["input_ids"] == expected


def test_turns_a_template_renders_differently_later_become_examples_of_their_own(smollm2):
    """Qwen3 writes the empty reasoning block only into turns after the last user message: the first reply of a
    two-turn chat is trained as the model saw it when writing it, not as later turns show it."""
    tokenizer, stops = family_tokenizer("qwen3", smollm2)
    messages = CHATS["two turns"]
    last, first = tokenize_chat(tokenizer, messages, tokenizer.chat_template, stops)
    assert (
        last["input_ids"]
        == tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    )
    as_written = tokenizer.apply_chat_template(messages[:2], tokenize=True, return_dict=True)["input_ids"]
    assert first["input_ids"] == as_written
    assert masked_runs(tokenizer, first) == ["<think>\n\n</think>\n\nHello! How can I help?<|im_end|>"]


@pytest.mark.parametrize("family", [name for name, family in FAMILIES.items() if family.renders_tools])
def test_tool_calls_are_trained_as_the_template_writes_them(smollm2, family):
    tokenizer, stops = family_tokenizer(family, smollm2)
    end_of_turn = FAMILIES[family].end
    examples = tokenize_chat(tokenizer, TOOL_CHAT, tokenizer.chat_template, stops, tools=TOOLS)
    runs = [run for example in examples for run in masked_runs(tokenizer, example)]
    call = next(run for run in runs if "get_weather" in run)
    assert '"Paris"' in call and call.endswith(end_of_turn)
    assert "sunny, 21 C" not in call  # the tool's answer is not the assistant's
    assert any(run.endswith("It is sunny and 21 C in Paris." + end_of_turn) for run in runs)
    assert len(runs) == 2


@pytest.mark.parametrize(
    ("family", "problem"),
    [("phi3.5", "drops tool calls"), ("gemma3", "Conversation roles must alternate")],
)
def test_templates_without_tool_support_are_refused(smollm2, family, problem):
    tokenizer, stops = family_tokenizer(family, smollm2)
    with pytest.raises(ChatMaskError, match=problem):
        tokenize_chat(tokenizer, TOOL_CHAT, tokenizer.chat_template, stops, tools=TOOLS)


def test_agrees_with_trl_training_template_where_that_is_exact(smollm2):
    """TRL's Llama 3 training template (generation markers) renders the same tokens and masks the same ones."""
    from trl.chat_template_utils import get_training_chat_template

    tokenizer, stops = family_tokenizer("llama3", smollm2)
    training = get_training_chat_template(tokenizer)
    for messages in CHATS.values():
        [ours] = tokenize_chat(tokenizer, messages, tokenizer.chat_template, stops)
        theirs = tokenizer.apply_chat_template(messages, chat_template=training, tokenize=True, return_dict=True,
                                               return_assistant_tokens_mask=True)  # fmt: skip
        assert ours == {"input_ids": theirs["input_ids"], "assistant_masks": theirs["assistant_masks"]}


def test_a_model_without_template_gets_chatml_when_its_vocabulary_has_it(smollm2, smollm2_tokenizer):
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    tokenizer.chat_template = None
    template = resolve_template(tokenizer)
    assert template.origin == "default-chatml" and "ChatML" in template.note
    stops = stop_token_ids(tokenizer, None, template)
    messages = CHATS["system, two turns"]
    [ours] = tokenize_chat(tokenizer, messages, template.text, stops)
    assert masked_runs(tokenizer, ours) == [reply + "<|im_end|>" for reply in replies(messages)]
    # the default has {% generation %} markers: transformers' own mask agrees
    theirs = tokenizer.apply_chat_template(messages, chat_template=template.text, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)  # fmt: skip
    assert ours["assistant_masks"] == theirs["assistant_masks"]


def test_a_model_without_template_or_chatml_tokens_gets_plain_turns_ended_by_eos():
    texts = [m["content"] for chat in CHATS.values() for m in chat] * 20
    backend = sentencepiece_style(texts + ["User: Assistant: System:"] * 5)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<s>", "</s>")])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", clean_up_tokenization_spaces=False)  # fmt: skip
    template = resolve_template(tokenizer)
    assert template.origin == "default-plain" and "EOS" in template.note
    messages = CHATS["system, two turns"]
    [ours] = tokenize_chat(tokenizer, messages, template.text, stop_token_ids(tokenizer, None, template))
    assert [run.strip() for run in masked_runs(tokenizer, ours)] == [r + "</s>" for r in replies(messages)]
    theirs = tokenizer.apply_chat_template(messages, chat_template=template.text, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)  # fmt: skip
    assert ours["assistant_masks"] == theirs["assistant_masks"]


def test_a_template_file_replaces_the_models(tmp_path, smollm2_tokenizer):
    from llmforge.data.tokenizer import CHAT_TEMPLATE

    file = tmp_path / "chat_template.jinja"
    file.write_text(CHAT_TEMPLATE)
    template = resolve_template(smollm2_tokenizer, file)
    assert template.origin == "file" and template.text == CHAT_TEMPLATE
    with pytest.raises(InputError, match="missing.jinja: cannot read"):
        resolve_template(smollm2_tokenizer, tmp_path / "missing.jinja")
    file.write_text("{{ messages[0]['content'] | no_such_filter }}")
    with pytest.raises(
        InputError, match="chat_template.jinja: the chat template cannot render a user/assistant"
    ):
        resolve_template(smollm2_tokenizer, file)


def test_records_that_leave_nothing_to_train_on_are_refused_by_location(smollm2, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    template = resolve_template(tokenizer)
    stops = stop_token_ids(tokenizer, smollm2, template)
    records = [
        {"messages": CHATS["one turn"]},
        {"prompt": CHATS["two turns"][:3], "completion": CHATS["two turns"][3:]},
    ]
    examples = chat_examples(records, ["chats.jsonl:1", "chats.jsonl:2"], tokenizer, template, stops, 512)
    assert [masked_runs(tokenizer, e) for e in examples] == [
        ["2 + 2 = 4.<|im_end|>"],
        ["Hello! How can I help?<|im_end|>", "Bye!<|im_end|>"],
    ]
    with pytest.raises(
        InputError, match=r"chats.jsonl:2: the loss mask is empty \(the assistant's turns start "
    ):
        chat_examples(records[1:], ["chats.jsonl:2"], tokenizer, template, stops, 20)
    # prompt/completion chats trained on the completion only: the prompt's replies are context
    [completion] = chat_examples(records[1:], ["chats.jsonl:2"], tokenizer, template, stops, 512,
                                 completion_only=True)  # fmt: skip
    assert completion["input_ids"] == examples[1]["input_ids"]
    assert masked_runs(tokenizer, completion) == ["Bye!<|im_end|>"]
    gemma, gemma_stops = family_tokenizer("gemma3", smollm2)
    alternating = [{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                                 {"role": "assistant", "content": "c"}]}]  # fmt: skip
    with pytest.raises(InputError, match="chats.jsonl:7: the chat template cannot render this chat"):
        chat_examples(alternating, ["chats.jsonl:7"], gemma, resolve_template(gemma), gemma_stops, 512)


# A template of a kind TRL warns about: each turn's end-of-turn token is written when the next message starts.
END_OF_TURN_WITH_THE_NEXT_MESSAGE = (
    "{%- for message in messages %}{%- if not loop.first %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_end|>\\n<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_an_end_of_turn_token_written_with_the_next_message_is_still_trained_on(
    smollm2, smollm2_tokenizer, capsys
):
    tokenizer = smollm2_tokenizer
    stops = stop_token_ids(tokenizer, smollm2)
    template = Template(END_OF_TURN_WITH_THE_NEXT_MESSAGE, "file")
    [example] = chat_examples(
        [{"messages": CHATS["two turns"]}], ["chats.jsonl:4"], tokenizer, template, stops, 512
    )
    assert masked_runs(tokenizer, example) == ["Hello! How can I help?<|im_end|>", "Bye!"]
    # the last reply has no stop token to learn: said on screen
    assert "1 assistant turn(s) end without a stop token (<|im_end|>)" in capsys.readouterr().err
