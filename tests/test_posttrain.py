"""The shared post-training plumbing: settings, dataset validation before any compute, refusals."""

import json

import pytest
from helpers import chat_records, documents_artifact_from_records, llmforge, write_jsonl

from llmforge.data.records import dataset_ref, read_records
from llmforge.errors import InputError
from llmforge.files import read_jsonl
from llmforge.stages import dpo, grpo, sft
from llmforge.train.posttrain import LoraSettings
from llmforge.train.trl_job import LiveMetrics, to_dataset


def torch_cuda_and_vllm() -> bool:
    import importlib.util

    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def test_lora_defaults_follow_the_recipe():
    lora = LoraSettings()
    assert (lora.rank, lora.alpha, lora.dropout, lora.target_modules) == (16, 32, 0.05, "all-linear")
    assert LoraSettings(rank=32).alpha == 64
    assert LoraSettings(merge=True).enabled and LoraSettings(qlora=True).enabled
    assert 1 <= sft.Config().epochs <= 3
    assert dpo.Config().beta == 0.1 and grpo.Config().num_generations == 8


SFT_BAD = [
    ({"messages": []}, "'messages' must be a non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn with content"),
    ({"messages": [{"role": "bot", "content": "hi"}]}, "messages[0].role is 'bot'"),
    (
        {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]},
        "messages[0] (user) needs a string",
    ),
    ({"prompt": "2+2?"}, "has 'prompt' but no 'completion'"),
    (
        {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "user", "content": "a"}]},
        "may only hold assistant turns",
    ),  # fmt: skip
    ({"text": ""}, "'text' must be a non-empty string"),
    ({"question": "q", "answer": "a"}, "needs 'messages' (a chat), 'prompt' and 'completion', or 'text'"),
]


@pytest.mark.parametrize("record, problem", SFT_BAD)
def test_sft_reports_the_first_bad_record_by_file_and_line(tmp_path, record, problem):
    data = write_jsonl(tmp_path / "data.jsonl", chat_records(3) + [record] + chat_records(2))
    with pytest.raises(InputError) as error:
        read_records(data, "sft", sft.validator(sft.Config()))
    assert str(error.value).startswith(f"{data}:4: ") and problem in str(error.value)


def test_one_dataset_holds_one_shape(tmp_path):
    data = write_jsonl(tmp_path / "mixed.jsonl", chat_records(2) + [{"text": "plain text"}])
    with pytest.raises(
        InputError, match=r"mixed.jsonl:3: a 'text' record in a dataset of 'messages' records"
    ):
        read_records(data, "sft", sft.validator(sft.Config()))


def test_invalid_json_is_reported_with_its_line(tmp_path):
    data = write_jsonl(
        tmp_path / "broken.jsonl", [json.dumps(r) for r in chat_records(2)] + ['{"messages": [']
    )
    with pytest.raises(InputError, match=r"broken.jsonl:3: not valid JSON"):
        read_records(data, "sft", sft.validator(sft.Config()))


def test_dpo_and_grpo_record_checks(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(pairs, [{"prompt": "q", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "a"}])
    with pytest.raises(InputError, match=r"pairs.jsonl:2: has 'chosen' but no 'rejected'"):
        read_records(pairs, "dpo", dpo.validator(dpo.Config()))
    unpaired = write_jsonl(tmp_path / "kto.jsonl", [{"prompt": "q", "completion": "a", "label": True}])
    with pytest.raises(InputError, match="only --loss kto learns from unpaired labels"):
        read_records(unpaired, "dpo", dpo.validator(dpo.Config()))
    kto = dpo.Config(loss="kto")
    records = read_records(unpaired, "dpo", dpo.validator(kto))
    assert records.shape == "unpaired"
    with pytest.raises(InputError, match=r"kto needs both good \(label true\) and bad \(label false\)"):
        dpo.check(records, None, kto)
    same = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "a"}])
    with pytest.raises(InputError, match="identical"):
        read_records(same, "dpo", dpo.validator(dpo.Config()))

    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1+1?", "answer": 2}, {"prompt": "2+2?"}])
    with pytest.raises(InputError, match=r"prompts.jsonl:2: needs 'answer' for the math reward"):
        read_records(prompts, "grpo", grpo.validator(grpo.Config()))
    schemas = write_jsonl(tmp_path / "schemas.jsonl", [{"prompt": "a name", "schema": {"type": "nonsense"}}])
    with pytest.raises(InputError, match=r"schemas.jsonl:1: 'schema' is not a valid JSON Schema"):
        read_records(schemas, "grpo", grpo.validator(grpo.Config(rewards=["json"])))
    with pytest.raises(InputError, match="must be a multiple of num_generations"):
        from llmforge.config import load_config

        load_config(grpo.Config, flags={"batch_size": 6})


def test_training_dataset_keeps_every_record_as_written():
    """What the trainer gets: a field only later records have is kept, mixed and nested values come back unchanged
    (plain Arrow takes the first record's columns, refuses `tests` as a string and a list, merges structs)."""
    rows = [
        {"prompt": "a", "answer": "1", "tests": "assert f() == 1", "meta": 1},
        {"prompt": "b", "answer": "2", "tests": ["assert g()", "assert h()"], "meta": "x",
         "schema": '{"type": "object"}', "extra": {"k": [1, 2]}},
        {"prompt": [{"role": "user", "content": "c"}], "answer": "3", "tests": "", "meta": 2.5,
         "extra": {"other": True}},
    ]  # fmt: skip
    dataset = to_dataset(rows)
    columns = ["prompt", "answer", "tests", "meta", "schema", "extra"]
    assert dataset.column_names == columns
    assert list(dataset) == [{column: row.get(column) for column in columns} for row in rows]
    assert dataset.features["answer"].dtype == "string"  # one plain type stays a plain column
    tokenized = to_dataset(
        [{"input_ids": [5, 6, 7], "assistant_masks": [0, 1, 1]}, {"input_ids": [8], "assistant_masks": [1]}]
    )
    assert tokenized.features["input_ids"].feature.dtype == "int64"  # sft's pre-tokenized chats: token lists
    assert tokenized[0] == {"input_ids": [5, 6, 7], "assistant_masks": [0, 1, 1]}


def test_parquet_and_documents_inputs(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "Say hi", "completion": "hi"}, {"prompt": "Say yo", "completion": ""}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    with pytest.raises(
        InputError, match=r"data.parquet \(record 2\): 'completion' must be a non-empty string"
    ):
        read_records(tmp_path / "data.parquet", "sft", sft.validator(sft.Config()))
    array = tmp_path / "array.json"
    array.write_text(json.dumps([{"text": "first"}, {"text": 7}], indent=2))
    with pytest.raises(InputError, match=r"array.json \(record 2\): 'text' must be a non-empty string"):
        read_records(array, "sft", sft.validator(sft.Config()))
    import zstandard

    compressed = tmp_path / "chats.jsonl.zst"  # as datasets ship: also .json.gz, .json.zst, .jsonl.gz
    compressed.write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "first"}\n{"text": ""}\n'))
    with pytest.raises(InputError, match=r"chats.jsonl.zst:2: 'text' must be a non-empty string"):
        read_records(compressed, "sft", sft.validator(sft.Config()))
    documents = documents_artifact_from_records(
        tmp_path / "docs", [{"text": "one document"}, {"text": "two"}]
    )
    records = read_records(documents, "sft", sft.validator(sft.Config()))
    assert records.shape == "text" and [r["text"] for r in records.items] == ["one document", "two"]
    assert dataset_ref(documents, "sft").kind == "documents"


def test_empty_assistant_mask_is_refused_before_training(tmp_path, tiny_model):
    long_question = "word " * 300
    records = chat_records(2) + [{"messages": [{"role": "user", "content": long_question},
                                               {"role": "assistant", "content": "ok"}]}]  # fmt: skip
    data = write_jsonl(tmp_path / "long.jsonl", records)
    with pytest.raises(
        InputError, match=r"long.jsonl:3: the loss mask is empty \(the assistant's turns start after"
    ):
        sft.run(tiny_model, data, tmp_path / "out", sft.Config(max_length=64))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    pairs = [{"prompt": "Say yes.", "completion": " yes"}, {"prompt": long_question, "completion": " ok"}]
    data = write_jsonl(tmp_path / "long-prompt.jsonl", pairs)
    with pytest.raises(
        InputError, match=r"long-prompt.jsonl:2: the prompt alone fills max_length \(64 tokens\)"
    ):
        sft.run(tiny_model, data, tmp_path / "out", sft.Config(max_length=64))
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_cli_exit_codes_for_bad_input(tmp_path, tiny_model):
    data = write_jsonl(tmp_path / "data.jsonl", chat_records(2) + [{"messages": "hello"}])
    bad = llmforge("sft", tiny_model, data, "-o", tmp_path / "a", check=False)
    assert bad.returncode == 2 and f"{data}:3: 'messages' must be a non-empty list" in bad.stderr
    assert bad.stdout == ""
    good = write_jsonl(tmp_path / "good.jsonl", chat_records(4))
    wrong_kind = llmforge("dpo", tmp_path, good, "-o", tmp_path / "c", check=False)
    assert (
        wrong_kind.returncode == 2
        and "neither an llmforge artifact nor a Hugging Face model" in wrong_kind.stderr
    )


@pytest.mark.skipif(torch_cuda_and_vllm(), reason="vLLM and a GPU are here: --use-vllm can run")
def test_use_vllm_is_refused_where_it_cannot_run(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1 + 1?", "answer": "2"}])
    config = grpo.Config(use_vllm=True, batch_size=8, max_length=64, max_completion_length=8)
    with pytest.raises(InputError, match=r"^--use-vllm needs (a CUDA GPU|vLLM)") as refused:
        grpo.run(tiny_model, prompts, tmp_path / "out", config)
    import torch

    if not torch.cuda.is_available():  # the refusal names both ways TRL fails with vLLM's CPU build
        message = str(refused.value)
        assert "linear.py:1341" in message and "weight_loader" in message
        assert "vllm_client.py:757 init_communicator" in message and "NCCL" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_live_metrics_append_jsonl_and_keep_the_last_figures_on_screen(tmp_path):
    from transformers import TrainerControl, TrainerState, TrainingArguments

    args, control = TrainingArguments(output_dir=str(tmp_path), use_cpu=True), TrainerControl()
    state = TrainerState(max_steps=2, is_world_process_zero=True)
    display = LiveMetrics(tmp_path / "metrics.jsonl", "dpo", resumed_step=0)
    display.on_train_begin(args, state, control)
    for step, logs in ((1, {"loss": 0.69}), (2, {"loss": 0.5, "rewards/accuracies": 1.0}),
                       (2, {"train_runtime": 1.5, "train_loss": 0.6})):  # fmt: skip
        state.global_step = step
        display.on_step_end(args, state, control)
        display.on_log(args, state, control, logs=logs)
    task = display.progress.tasks[0]
    assert task.description == "dpo loss 0.5 accuracies 1" and task.completed == 2
    display.on_train_end(args, state, control)
    assert [(r["step"], "loss" in r) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, True),
        (2, True),
        (2, False),
    ]
