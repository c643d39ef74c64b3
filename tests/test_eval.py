"""llmforge eval: lm-eval's own numbers on the bundled tasks, perplexity, comparisons, contamination, bad input.

Every evaluation here is real (lm-eval's Hugging Face backend on a tiny random Llama, and on the real
SmolLM2-135M-Instruct); the reference numbers come from calling lm_eval.simple_evaluate directly on the same model,
tasks and settings.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import Imported, documents_artifact, sentences, tiny_model_artifact, tokens_artifact, write_jsonl

from llmforge.artifacts import Artifact, run_stage
from llmforge.errors import InputError
from llmforge.evaluation import models as eval_models
from llmforge.evaluation import report
from llmforge.evaluation.arithmetic import problems
from llmforge.evaluation.tasks import ARITHMETIC_DATA, TASKS_DIR
from llmforge.stages import eval as eval_stage

# one worker: the reports below are shared by several tests; one torch thread (two workers share two cores)
pytestmark = [pytest.mark.xdist_group("eval"), pytest.mark.usefixtures("one_thread")]

BUNDLED = ["llmforge_arith", "llmforge_arith_mc", "llmforge_arith_reasoning"]
LIMIT = 8  # generation on a random model runs to max_gen_toks: keep the generative tasks short


def direct(model_args: dict, tasks: list[str], **kwargs) -> dict:
    """lm-eval called the way its docs show, on the bundled task directory: the reference numbers.

    The one change: the model's generation_config.max_new_tokens (256 in our checkpoints) is cleared, as eval does,
    so that both honour each task's max_gen_toks instead of transformers letting the checkpoint override it."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(device="cpu", batch_size=16, **model_args)
    lm.model.generation_config.max_new_tokens = None
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=manager, **kwargs)


def same_scores(ours: dict, theirs: dict) -> None:
    assert ours["results"].keys() == theirs["results"].keys()
    for task, metrics in theirs["results"].items():
        for key, value in metrics.items():
            if isinstance(value, float):
                assert ours["results"][task][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (task, key)
            else:
                assert ours["results"][task][key] == value, (task, key)


@pytest.fixture(scope="module")
def bundled_report(tiny_model, tmp_path_factory) -> Path:
    # the bundled tasks are chat exchanges (as the tiny recipe scores them): asked for, as lm-eval's CLI is asked
    config = eval_stage.Config(limit=LIMIT, log_samples=True, apply_chat_template=True)
    return eval_stage.run([str(tiny_model)], tmp_path_factory.mktemp("eval") / "report", config)


def test_bundled_tasks_give_lm_evals_own_numbers(bundled_report, tiny_model):
    results = json.loads((bundled_report / "results.json").read_text())
    reference = direct({"pretrained": str(tiny_model)}, BUNDLED, limit=LIMIT, apply_chat_template=True,
                       fewshot_as_multiturn=True)  # fmt: skip
    same_scores(results, reference)
    # lm-eval's full record: versions, n-shot, configs, hashes, chat template
    assert results["versions"] == {task: 1.0 for task in BUNDLED}
    assert results["n-shot"] == {task: 0 for task in BUNDLED}
    assert results["n-samples"]["llmforge_arith"] == {"original": 30, "effective": LIMIT}
    assert set(results["configs"]) == set(BUNDLED) and set(results["task_hashes"]) == set(BUNDLED)
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in results["task_hashes"].values())
    assert results["chat_template_sha"] and "<|im_start|>" in results["chat_template"]
    assert results["llmforge"]["chat_template"] is True and results["llmforge"]["backend"] == "hf"
    # samples only on request: one line per item and filter, the same replies as lm-eval's own run
    for task in BUNDLED:
        lines = (bundled_report / "samples" / f"{task}.jsonl").read_text().splitlines()
        ours = [[s["doc_id"], s["filter"], s["resps"], s["filtered_resps"]] for s in map(json.loads, lines)]
        theirs = [
            (s["doc_id"], s["filter"], s["resps"], s["filtered_resps"]) for s in reference["samples"][task]
        ]
        assert ours == json.loads(json.dumps(theirs)) and len(ours) == LIMIT * (
            2 if task == "llmforge_arith" else 1
        )
    manifest = Artifact.open(bundled_report)
    assert manifest.kind == "eval-report"
    again = eval_stage.run(
        [str(tiny_model)],
        bundled_report,
        eval_stage.Config(limit=LIMIT, log_samples=True, chat_template=True),
    )  # the old name of the setting still reads
    assert (
        again == bundled_report and Artifact.open(bundled_report).manifest == manifest.manifest
    )  # up to date
    assert manifest.stats["scores"] == report.headline(results)
    assert manifest.stats["scores"]["llmforge_arith_mc"]["acc,none"] == round(
        results["results"]["llmforge_arith_mc"]["acc,none"], 4
    )
    roles = [entry.get("role") for entry in manifest.manifest["inputs"]]
    assert roles == ["model", "tasks"]
    assert manifest.manifest["inputs"][0]["fingerprint"] == Artifact.open(tiny_model).fingerprint


def test_bundled_task_data_is_the_generators_held_out_split(tmp_path):
    from llmforge.evaluation.arithmetic import write_jsonl as write_problems

    assert write_problems(tmp_path / "eval.jsonl").read_text() == ARITHMETIC_DATA.read_text()
    held_out, train = problems("eval"), problems("train")
    assert len(held_out) == 30 and len(train) == 70 and not {p.id for p in held_out} & {p.id for p in train}
    for line in ARITHMETIC_DATA.read_text().splitlines():
        item = json.loads(line)
        a, b = map(int, re.fullmatch(r"What is (\d) \+ (\d)\?", item["question"]).groups())
        assert item["choices"][item["label"]] == item["answer"] == str(a + b)


def test_reasoning_task_scores_with_grpos_rewards():
    from llmforge.evaluation.tasks import score_with_rewards

    doc = {"answer": "7"}
    trained = problems("eval")[0].completion(reasoning=True)
    assert re.fullmatch(r"<think>.+</think><answer>\d+</answer>", trained)
    assert score_with_rewards({"answer": problems("eval")[0].answer}, [trained]) == {
        "format": 1.0,
        "math": 1.0,
    }
    assert score_with_rewards(doc, ["<think>3 plus 4</think><answer>8</answer>"]) == {
        "format": 1.0,
        "math": 0.0,
    }
    assert score_with_rewards(doc, ["7"]) == {"format": 0.0, "math": 0.0}  # right, but not in the format
    assert score_with_rewards(doc, ["<think>3 plus 4</think>7"]) == {
        "format": 0.4,
        "math": 0.0,
    }  # partial credit


def test_strict_match_accepts_the_formats_training_uses():
    from lm_eval.filters.extraction import RegexFilter
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(TASKS_DIR / "llmforge" / "arithmetic.yaml", resolve_func=False)
    assert config["filter_list"][0]["name"] == "strict-match"
    strict = RegexFilter(regex_pattern=config["filter_list"][0]["filter"][0]["regex_pattern"])
    replies = ["7", " 7 ", "<think>3 plus 4 is 7</think>7", "<think>3 plus 4 is 7</think><answer>7</answer>",
               "The answer is 7", "7 apples", "<think>7</think>"]  # fmt: skip
    assert strict.apply([[r] for r in replies], [{}] * len(replies)) == [["7"]] * 4 + [["[invalid]"]] * 3


@pytest.fixture(scope="module")
def random_models(tmp_path_factory, tiny_tokenizer_dir) -> list[Path]:
    root = tmp_path_factory.mktemp("random")
    return [tiny_model_artifact(root / f"seed{seed}", tiny_tokenizer_dir, seed=seed) for seed in (1, 2, 3)]


@pytest.fixture(scope="module")
def random_report(random_models, tmp_path_factory) -> Path:
    config = eval_stage.Config(tasks=["llmforge_arith_mc"])
    return eval_stage.run([str(m) for m in random_models], tmp_path_factory.mktemp("eval") / "random", config)


def test_random_models_score_chance_on_multiple_choice(random_report, random_models):
    models = report.model_results(random_report)
    assert [m.label for m in models] == [str(m) for m in random_models]
    correct = sum(m.results["results"]["llmforge_arith_mc"]["acc,none"] * 30 for m in models)
    # 90 four-way choices: a model that knows nothing is right 22.5 times on average; 99% of the time 11..34
    assert 11 <= round(correct) <= 34
    stats = Artifact.open(random_report).stats["models"]
    assert list(stats) == [str(m) for m in random_models]


def test_compare_table_shows_deltas_against_the_first(bundled_report, random_report, capsys):
    from rich.console import Console

    first = report.model_results(bundled_report)[0]
    others = report.model_results(random_report)
    rows = report.comparison([first, *others])
    by_key = {(r.task, r.metric, r.filter): r for r in rows}
    acc = by_key[("llmforge_arith_mc", "acc", "none")]
    values = [first.results["results"]["llmforge_arith_mc"]["acc,none"]]
    values += [m.results["results"]["llmforge_arith_mc"]["acc,none"] for m in others]
    assert acc.values == values
    assert acc.deltas == [0.0] + [v - values[0] for v in values[1:]]
    assert acc.higher_is_better is True
    generation = by_key[("llmforge_arith", "exact_match", "strict-match")]
    assert generation.values[1:] == [None, None, None] and generation.deltas[1:] == [None, None, None]

    console = Console(record=True, width=400, file=io.StringIO())
    console.print(report.comparison_table([first, *others]))
    text = console.export_text()
    line = next(line for line in text.splitlines() if "llmforge_arith_mc" in line)
    assert f"{values[0]:.4f}" in line and f"{values[1]:.4f} ({values[1] - values[0]:+.4f})" in line
    assert "—" in next(line for line in text.splitlines() if "strict-match" in line)

    assert report.comparability_warnings([first, *others]) == [
        "prompts differ between the models (chat template; plain prompts); their scores do not compare",
        "llmforge_arith_mc: evaluated on different numbers of items (8, 30)",
    ]
    eval_stage.compare([str(bundled_report), str(random_report)])  # the CLI's --compare: four columns
    assert capsys.readouterr().out == ""  # no artifact: nothing on stdout


def test_perplexity_matches_a_direct_computation(tiny_model, tiny_tokenizer_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    texts = sentences(40, seed=7)
    tokens = tokens_artifact(tmp_path / "tokens", tiny_tokenizer_dir, texts, val_fraction=0.2)
    text_file = write_jsonl(tmp_path / "held_out.jsonl", [{"text": t} for t in texts[30:]])
    plain = tmp_path / "plain.txt"  # a plain text file is one document
    plain.write_text(texts[20] + "\n" + texts[21], encoding="utf-8")
    config = eval_stage.Config(perplexity=[str(tokens), str(text_file), str(plain)], bootstrap_iters=0)
    out = eval_stage.run([str(tiny_model)], tmp_path / "report", config)
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"perplexity_tokens", "perplexity_held_out_jsonl", "perplexity_plain_txt"}

    model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def expected(docs: list[str]) -> dict[str, float]:
        loglikelihood = 0.0
        with torch.no_grad():
            for doc in docs:  # BOS, then the document: lm-eval's rolling window for a short document
                ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(doc)["input_ids"]]])
                logprobs = torch.log_softmax(model(ids).logits[0, :-1].double(), -1)
                loglikelihood += logprobs.gather(1, ids[0, 1:, None]).sum().item()
        words = sum(len(re.split(r"\s+", d)) for d in docs)
        size = sum(len(d.encode()) for d in docs)
        return {"word_perplexity,none": math.exp(-loglikelihood / words),
                "byte_perplexity,none": math.exp(-loglikelihood / size),
                "bits_per_byte,none": -loglikelihood / size / math.log(2)}  # fmt: skip

    for task, docs in (("perplexity_tokens", texts[:8]), ("perplexity_held_out_jsonl", texts[30:]),
                       ("perplexity_plain_txt", [plain.read_text()])):  # fmt: skip
        for key, value in expected(docs).items():
            assert results[task][key] == pytest.approx(value, rel=1e-4), (task, key)


def adapter_artifact(out: Path, base: Path) -> Path:
    """A LoRA adapter artifact on `base` with random (non-zero) LoRA weights, as sft --lora writes one."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmforge.model.loading import base_model_entry, resolve_model

    source = resolve_model(base, "test")

    def body(ctx):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))  # fmt: skip
        model.save_pretrained(ctx.work)
        AutoTokenizer.from_pretrained(base).save_pretrained(ctx.work)
        ctx.extra["base_model"] = base_model_entry(source, ctx.out)

    return run_stage("sft", "adapter", Imported(source="adapter"), [source.ref()], out, body)


def test_adapter_and_quantized_model_match_lm_eval(tiny_model, tmp_path):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TorchAoConfig

    adapter = adapter_artifact(tmp_path / "adapter", tiny_model)

    def quantize(ctx):
        model = AutoModelForCausalLM.from_pretrained(
            tiny_model, quantization_config=TorchAoConfig(Int8WeightOnlyConfig())
        )
        model.save_pretrained(ctx.work, safe_serialization=True)
        AutoTokenizer.from_pretrained(tiny_model).save_pretrained(ctx.work)

    ref = Artifact.open(tiny_model).ref()
    quantized = run_stage(
        "quantize", "quantized-model", Imported(source="int8"), [ref], tmp_path / "int8", quantize
    )

    config = eval_stage.Config(tasks=["llmforge_arith_mc"])
    out = eval_stage.run([str(tiny_model), str(adapter), str(quantized)], tmp_path / "report", config)
    base, lora, int8 = [m.results for m in report.model_results(out)]
    same_scores(lora, direct({"pretrained": str(tiny_model), "peft": str(adapter)}, ["llmforge_arith_mc"]))
    same_scores(int8, direct({"pretrained": str(quantized)}, ["llmforge_arith_mc"]))
    assert lora["config"]["model_args"]["peft"] == str(adapter)
    assert lora["results"] != base["results"]  # the adapter was applied
    assert [m["kind"] for m in (base["llmforge"], lora["llmforge"], int8["llmforge"])] == [
        "model", "adapter", "quantized-model"]  # fmt: skip


def test_vllm_backend_without_vllm_is_refused_and_adapters_go_as_lora(tiny_model, tmp_path, monkeypatch):
    import ast
    import importlib.util

    import torch

    from llmforge.model.loading import resolve_model

    has_vllm, gpu = importlib.util.find_spec("vllm") is not None, torch.cuda.is_available()
    if (
        not has_vllm
    ):  # a Python without vLLM named as vLLM's (so a .venv-vllm beside the checkout is not used)
        with (
            monkeypatch.context() as patch,
            pytest.raises(InputError, match=r"^--backend vllm: .* has no vLLM"),
        ):
            patch.setenv("LLMFORGE_VLLM_PYTHON", sys.executable)
            eval_stage.run([str(tiny_model)], tmp_path / "out", eval_stage.Config(backend="vllm"))
        assert not (tmp_path / "out.partial").exists()
    assert eval_models.resolve_backend("auto") == ("vllm" if has_vllm and gpu else "hf")

    # on vLLM an adapter is a LoRA request on its base, with the adapter's rank; every argument is one that
    # lm-eval's vLLM backend takes (read from its source: importing it needs vllm)
    adapter = adapter_artifact(tmp_path / "adapter", tiny_model)
    arguments = eval_models.model_arguments(resolve_model(str(adapter), "eval"), "vllm", eval_stage.Config())
    assert Path(arguments["pretrained"]).resolve() == tiny_model.resolve()
    assert arguments["lora_local_path"] == str(adapter) and arguments["max_lora_rank"] == 4
    assert "peft" not in arguments and "max_length" not in arguments
    source = Path(importlib.util.find_spec("lm_eval.models.vllm_causallms").origin).read_text()
    backend = next(n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef) and n.name == "VLLM")
    init = next(n for n in backend.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    assert set(arguments) <= {a.arg for a in init.args.args + init.args.kwonlyargs}


def test_no_chat_template_by_default_as_in_lm_eval(tiny_model, tmp_path, capsys):
    # every llmforge model's tokenizer has a chat template; a base model is still scored on plain prompts
    config = eval_stage.Config(tasks=["llmforge_arith_m?"])  # a glob of task names
    assert config.apply_chat_template is False and config.multiturn is False
    out = eval_stage.run([str(tiny_model)], tmp_path / "report", config)
    results = json.loads((out / "results.json").read_text())
    assert list(results["results"]) == ["llmforge_arith_mc"]
    assert results["llmforge"]["chat_template"] is False and results["chat_template"] is None
    assert results["fewshot_as_multiturn"] is False and Artifact.open(out).stats["chat_template"] is False
    same_scores(results, direct({"pretrained": str(tiny_model)}, ["llmforge_arith_mc"]))
    assert f"{tiny_model}: plain prompts, no chat template (lm-eval's default)" in capsys.readouterr().err
    # few-shot turns are a way of writing chat prompts: without the chat template they are refused, as lm-eval does
    with pytest.raises(ValueError, match="few-shot turns need the chat template"):
        eval_stage.Config(fewshot_as_multiturn=True)


def user_task(directory: Path, items: list[dict], name: str = "my_quiz") -> Path:
    """A task directory the way lm-eval documents local data: YAML + JSONL."""
    data = write_jsonl(directory / "items.jsonl", items)
    (directory / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
        "output_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\ndoc_to_target: label\n"
        "metric_list:\n  - metric: acc\nmetadata:\n  version: 2.0\n"
    )
    return directory


LONG_ITEMS = [
    {"id": f"q{n}", "question": f"Which word ends the well known saying that starts with {' '.join(words)}",
     "choices": ["data", "tokens"], "label": 0}
    for n, words in enumerate(
        [["every", "token", "counts", "while", "the", "model", "learns"], ["navigation", "menus", "and", "boilerplate",
         "surround", "the", "useful", "article"], ["optimizer", "state", "is", "sharded", "across", "many", "devices"]]
    )
]  # fmt: skip


def lineage_model(out: Path, tiny_model: Path, parents: list[Artifact]) -> Path:
    """A model artifact trained (here: copied) from `parents`, so that lineage reaches them."""

    def body(ctx):
        for file in tiny_model.iterdir():
            if file.name != "artifact.json":
                shutil.copy2(file, ctx.work / file.name)

    return run_stage("pretrain", "model", Imported(source="copy"), [p.ref() for p in parents], out, body)


def test_contamination_check_reads_the_lineage(tiny_model, tmp_path):
    from llmforge.stages import dedup

    planted = LONG_ITEMS[1]["question"] + " data"  # one quiz item, word for word, in the training text
    crawl = documents_artifact(tmp_path / "crawl", sentences(40) + [f"Intro. {planted}. Outro."])
    deduped = dedup.run([str(crawl)], tmp_path / "dedup", decontaminate=[str(ARITHMETIC_DATA)],
                        config=dedup.Config(exact=False, minhash={"enabled": False}))  # fmt: skip
    model = lineage_model(tmp_path / "model", tiny_model, [Artifact.open(deduped)])
    quiz = user_task(tmp_path / "quiz", LONG_ITEMS)

    config = eval_stage.Config(tasks=["llmforge_arith_mc", f"{quiz}/"])
    out = eval_stage.run([str(model)], tmp_path / "report", config)
    found = json.loads((out / "results.json").read_text())["llmforge"]["contamination"]
    assert found["dedup"] == [str(deduped)] and found["training_documents"] == [str(deduped)]
    arithmetic, mine = found["tasks"]["llmforge_arith_mc"], found["tasks"]["my_quiz"]
    assert arithmetic["in_decontamination_set"] is True
    assert arithmetic["decontaminated_by"] == [{"dedup": str(deduped), "benchmark": str(ARITHMETIC_DATA),
                                                "items": 30, "items_hit": 0}]  # fmt: skip
    assert arithmetic["items_checked"] == 0  # "What is 3 + 4?" has no 13-gram: dedup cannot see it either
    assert mine["in_decontamination_set"] is False
    assert (mine["items"], mine["items_checked"], mine["items_overlapping"]) == (3, 3, 1)
    assert mine["overlapping_ids"] == ["q1"]
    stats = Artifact.open(out).stats["contamination"]
    assert stats["my_quiz"] == {"in_decontamination_set": False, "items_overlapping": 1}


def test_contamination_check_reads_the_files_post_training_read(tiny_model, tmp_path, capsys):
    from llmforge.artifacts import raw_input
    from llmforge.evaluation.contamination import check
    from llmforge.evaluation.tasks import select_tasks
    from llmforge.model.loading import resolve_model

    # SFT data as a user writes it: chats in JSONL, one of them quoting a quiz item (and its answer) word for word
    chats = [{"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "Noted."}]}
             for text in sentences(6)]  # fmt: skip
    chats.insert(3, {"messages": [{"role": "user", "content": LONG_ITEMS[2]["question"]},
                                  {"role": "assistant", "content": "data"}]})  # fmt: skip
    data = write_jsonl(tmp_path / "sft.jsonl", chats)

    def body(ctx):
        for file in tiny_model.iterdir():
            if file.name != "artifact.json":
                shutil.copy2(file, ctx.work / file.name)

    inputs = [Artifact.open(tiny_model).ref(), raw_input(str(data), [str(data)])]  # as sft records them
    model = run_stage("sft", "model", Imported(source="copy"), inputs, tmp_path / "sft", body)
    quiz = user_task(tmp_path / "quiz", LONG_ITEMS)
    capsys.readouterr()
    out = eval_stage.run([str(model)], tmp_path / "report", eval_stage.Config(tasks=[f"{quiz}/"]))
    # a chat-tuned model scored without its chat template (lm-eval's default) is pointed at the flag
    assert (f"{model} is chat-tuned (sft in its lineage) but is scored on plain prompts (lm-eval's default): add "
            "--apply-chat-template" in " ".join(capsys.readouterr().err.split()))  # fmt: skip
    found = json.loads((out / "results.json").read_text())["llmforge"]["contamination"]
    assert found["training_documents"] == [str(data)] and found["training_data_not_checked"] == []
    assert found["tasks"]["my_quiz"]["overlapping_ids"] == ["q2"]
    assert Artifact.open(out).stats["contamination"]["my_quiz"] == {"items_overlapping": 1}

    # the file changed after training: not what the model saw, so it is named instead of read
    data.write_text(data.read_text().replace("optimizer", "scheduler"))
    taskset = select_tasks([f"{quiz}/"])
    tasks = taskset.leaf_tasks(taskset.load())
    found = check(resolve_model(str(model), "eval"), tasks, {}, 13)
    assert found["training_documents"] == [] and found["tasks"]["my_quiz"]["items_overlapping"] == 0
    assert found["training_data_not_checked"] == [f"{data} (changed since sft trained on it)"]
    data.unlink()
    found = check(resolve_model(str(model), "eval"), tasks, {}, 13)
    assert found["training_data_not_checked"] == [f"{data} (sft trained on it; it is no longer there)"]
    lines = report.contamination_lines(report.ModelResults("sft", {"llmforge": {"contamination": found}}))
    assert (
        f"sft: training data not checked for overlap: {data} (sft trained on it; it is no longer there)"
        in lines[1]
    )


def test_contamination_report_same_with_index_cache_cold_warm_or_off(tiny_model, tmp_path, monkeypatch):
    from llmforge.artifacts import raw_input
    from llmforge.evaluation.contamination import check
    from llmforge.evaluation.tasks import select_tasks
    from llmforge.model.loading import resolve_model

    # two sources of training text: documents quoting item q0, and SFT chats quoting item q2 with its answer
    docs = documents_artifact(tmp_path / "docs", sentences(60) + [f"Seen: {LONG_ITEMS[0]['question']} data."])
    chats = [{"messages": [{"role": "user", "content": t}, {"role": "assistant", "content": "Noted."}]}
             for t in sentences(6, seed=1)]  # fmt: skip
    chats.append({"messages": [{"role": "user", "content": LONG_ITEMS[2]["question"]},
                               {"role": "assistant", "content": "data"}]})  # fmt: skip
    data = write_jsonl(tmp_path / "sft.jsonl", chats)

    def body(ctx):
        for file in tiny_model.iterdir():
            if file.name != "artifact.json":
                shutil.copy2(file, ctx.work / file.name)

    inputs = [Artifact.open(tiny_model).ref(), Artifact.open(docs).ref(), raw_input(str(data), [str(data)])]
    model = resolve_model(str(run_stage("sft", "model", Imported(source="copy"), inputs, tmp_path / "sft", body)),
                          "eval")  # fmt: skip
    taskset = select_tasks([f"{user_task(tmp_path / 'quiz', LONG_ITEMS)}/"])
    tasks = taskset.leaf_tasks(taskset.load())

    cache = tmp_path / "cache"
    monkeypatch.setenv("LLMFORGE_CACHE", str(cache))
    off = check(model, tasks, {}, 13, cache=False)
    assert not cache.exists()
    cold = check(model, tasks, {}, 13)
    assert len([p for p in (cache / "contamination").iterdir() if p.is_dir()]) == 2  # one index per source
    warm = check(model, tasks, {}, 13)
    assert off == cold == warm
    assert cold["training_documents"] == [str(docs), str(data)]
    assert cold["tasks"]["my_quiz"] == {"in_decontamination_set": False, "decontaminated_by": [], "items": 3,
                                        "items_checked": 3, "items_overlapping": 2, "overlapping_ids": ["q0", "q2"]}  # fmt: skip
    # other n-gram settings are another index: 4-grams find what 13-grams find here, and the same in every mode
    assert check(model, tasks, {}, 4, keep_numbers=True) == check(model, tasks, {}, 4, True, cache=False)
    assert len([p for p in (cache / "contamination").iterdir() if p.is_dir()]) == 4


def test_standard_task_from_the_local_datasets_cache(tiny_model, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(InputError, match=r"task lambada_openai: its dataset EleutherAI/lambada_openai \(default\) "
                                         r"is not in .* llmforge runs offline"):  # fmt: skip
        eval_stage.run([str(tiny_model)], tmp_path / "missing", eval_stage.Config(tasks=["lambada_openai"]))
    # a group: its subgroups and tasks are looked up in lm-eval's catalog too, so their datasets are named
    with pytest.raises(InputError, match=r"task mmlu: its datasets cais/mmlu \(abstract_algebra\), cais/mmlu "
                                         r"\(anatomy\), cais/mmlu \(astronomy\) \(and \d+ more\) are not all in "
                                         r".* llmforge runs offline; .* to download them$"):  # fmt: skip
        eval_stage.run([str(tiny_model)], tmp_path / "missing", eval_stage.Config(tasks=["mmlu"]))

    cache_dataset(tmp_path / "cache", "EleutherAI/lambada_openai", "default", "test",
                  [{"text": text} for text in sentences(6)])  # fmt: skip
    quiz = user_task(tmp_path / "quiz", LONG_ITEMS)  # a task file beside a standard task: looked up locally
    config = eval_stage.Config(tasks=["lambada_openai", str(quiz / "my_quiz.yaml")])
    out = eval_stage.run([str(tiny_model)], tmp_path / "report", config)
    results = json.loads((out / "results.json").read_text())
    assert results["n-samples"]["lambada_openai"]["effective"] == 6
    assert 0 <= results["results"]["lambada_openai"]["acc,none"] <= 1
    assert results["n-samples"]["my_quiz"]["effective"] == len(LONG_ITEMS)


def cache_dataset(cache: Path, repo: str, config: str, split: str, rows: list[dict]) -> None:
    """Put `rows` where `datasets` finds hub dataset `repo` offline after one download (its cache layout)."""
    import tempfile

    import datasets

    with tempfile.TemporaryDirectory() as scratch:
        source = write_jsonl(Path(scratch) / f"{split}.jsonl", rows)
        builder = datasets.load_dataset_builder("json", data_files={split: str(source)},
                                                cache_dir=str(Path(scratch) / "build"))  # fmt: skip
        builder.download_and_prepare()
        prepared = Path(builder.cache_dir)
        name = repo.split("/")[-1]
        target = cache / repo.replace("/", "___") / config / prepared.parts[-2] / prepared.parts[-1]
        target.mkdir(parents=True)
        info = json.loads((prepared / "dataset_info.json").read_text())
        info.update(config_name=config, dataset_name=name, builder_name=name)
        for entry in info["splits"].values():
            entry["dataset_name"] = name
        (target / "dataset_info.json").write_text(json.dumps(info))
        for arrow in prepared.glob("json-*.arrow"):
            shutil.copy(arrow, target / arrow.name.replace("json-", f"{name}-"))


def test_unknown_task_names_close_matches(tiny_model, tmp_path):
    with pytest.raises(InputError, match=r"unknown task 'llmforge_arithm'.*did you mean llmforge_arith"):
        eval_stage.run([str(tiny_model)], tmp_path / "out", eval_stage.Config(tasks=["llmforge_arithm"]))
    with pytest.raises(InputError, match=r"unknown task 'hellaswagg' \(not bundled, .* lm-eval's [\d,]+ tasks\); "
                                         r"did you mean hellaswag"):  # fmt: skip
        eval_stage.run([str(tiny_model)], tmp_path / "out", eval_stage.Config(tasks=["hellaswagg"]))
    assert not (tmp_path / "out.partial").exists()  # refused before any work


def test_a_broken_yaml_in_a_task_directory_is_named(tiny_model, tmp_path):
    # lm-eval's index skips a YAML it cannot parse without a word: its task would just be missing
    quiz = user_task(tmp_path / "quiz", LONG_ITEMS)
    (quiz / "second.yaml").write_text("task: second\ndataset_path: json\n  test: [\n")
    for config in (
        eval_stage.Config(tasks=[f"{quiz}/"]),
        eval_stage.Config(tasks=["my_quiz"], include=[str(quiz)]),
    ):
        with pytest.raises(InputError, match=rf"^{re.escape(str(quiz / 'second.yaml'))}:3: not valid YAML"):
            eval_stage.run([str(tiny_model)], tmp_path / "out", config)
    (quiz / "second.yaml").write_text("include: nowhere.yaml\ntask: second\n")
    with pytest.raises(InputError, match=rf"^{re.escape(str(quiz / 'second.yaml'))}: .*nowhere\.yaml"):
        eval_stage.run([str(tiny_model)], tmp_path / "out", eval_stage.Config(tasks=[f"{quiz}/"]))
    assert not (tmp_path / "out.partial").exists()  # refused before any work


def test_user_task_directory_and_file(tiny_model, tmp_path):
    quiz = user_task(tmp_path / "quiz", LONG_ITEMS)
    by_directory = eval_stage.run([str(tiny_model)], tmp_path / "a", eval_stage.Config(tasks=[f"{quiz}/"]))
    by_file = eval_stage.run(
        [str(tiny_model)], tmp_path / "b", eval_stage.Config(tasks=[str(quiz / "my_quiz.yaml")])
    )
    by_name = eval_stage.run(
        [str(tiny_model)], tmp_path / "c", eval_stage.Config(tasks=["my_quiz"], include=[str(quiz)])
    )
    assert json.loads((by_name / "results.json").read_text())["results"]["my_quiz"]["acc,none"] in (
        0,
        1 / 3,
        2 / 3,
        1,
    )
    first = json.loads((by_directory / "results.json").read_text())
    second = json.loads((by_file / "results.json").read_text())
    third = json.loads((by_name / "results.json").read_text())
    assert first["results"] == second["results"] == third["results"] and first["versions"] == {"my_quiz": 2.0}
    for report_dir in (
        by_directory,
        by_file,
        by_name,
    ):  # editing the task's YAML or data makes another report
        inputs = Artifact.open(report_dir).manifest["inputs"]
        assert [i["role"] for i in inputs] == ["model", "tasks"] and inputs[1]["files"] == 2  # YAML + JSONL


def test_an_interrupted_multi_model_run_resumes(tiny_model, tmp_path, capsys):
    # the second model's tokenizer loses its chat template: asking for one stops the run at that model
    second = tmp_path / "second"
    shutil.copytree(tiny_model, second)
    template = (second / "chat_template.jinja").read_text()
    (second / "chat_template.jinja").unlink()
    config = eval_stage.Config(tasks=["llmforge_arith_mc"], limit=4, apply_chat_template=True)
    models = [str(tiny_model), str(second)]
    with pytest.raises(
        InputError, match=r"second: --apply-chat-template asked for, but its tokenizer has no chat template"
    ):
        eval_stage.run(models, tmp_path / "report", config)
    assert (tmp_path / "report.partial" / "checkpoints" / "model-0.json").is_file()

    (second / "chat_template.jinja").write_text(template)  # fixed: the same command resumes
    capsys.readouterr()
    out = eval_stage.run(models, tmp_path / "report", config)
    assert f"resuming: {tiny_model} was evaluated before the interruption" in capsys.readouterr().err
    first, again = report.model_results(out)
    assert first.results["results"] == again.results["results"]  # the same weights, scored the same
    assert not (out / "checkpoints").exists()


def test_code_execution_tasks_run_only_when_allowed(tiny_model, tmp_path):
    # a task lm-eval marks unsafe_code (as HumanEval and MBPP are), here over local items: no download needed
    quiz = user_task(tmp_path / "code", LONG_ITEMS, name="code_quiz")
    task_file = quiz / "code_quiz.yaml"
    task_file.write_text(task_file.read_text() + "unsafe_code: true\ntag: code_tasks\n")
    refused = (r"^task code_quiz executes the code the model writes \(lm-eval's unsafe_code\); run in a sandbox and "
               r"confirm with --allow-code-execution$")  # fmt: skip
    for config in (eval_stage.Config(tasks=["llmforge_arith_mc", str(task_file)]),
                   eval_stage.Config(tasks=[f"{quiz}/"]),
                   eval_stage.Config(tasks=["code_tasks"], include=[str(quiz)])):  # fmt: skip
        with pytest.raises(InputError, match=refused):
            eval_stage.run([str(tiny_model)], tmp_path / "out", config)
        assert not (tmp_path / "out.partial").exists()  # refused before the stage began: no model was loaded

    allowed = eval_stage.Config(
        tasks=[str(task_file)], allow_code_execution=True
    )  # lm-eval's confirm_run_unsafe_code
    out = eval_stage.run([str(tiny_model)], tmp_path / "out", allowed)
    results = json.loads((out / "results.json").read_text())
    assert results["n-samples"]["code_quiz"]["effective"] == len(LONG_ITEMS)
    assert results["configs"]["code_quiz"]["unsafe_code"] is True


@pytest.mark.xdist_group("smollm2")  # the session's one import of the real model
def test_the_real_model_through_the_cli_gives_lm_evals_own_numbers(smollm2, tmp_path):
    """SmolLM2-135M-Instruct scored by `llmforge eval` and by lm_eval.simple_evaluate with the same settings: the
    same numbers, bit for bit, on plain prompts (the default) and in its chat template, generation settings given."""
    from lm_eval.utils import handle_non_serializable
    from typer.testing import CliRunner

    from llmforge.cli import app

    tasks, limit, instruction = ["llmforge_arith_mc", "llmforge_arith"], 8, "Answer with the number only."
    settings = {
        "plain": ([], {}),
        "chat": (["--apply-chat-template", "--system-instruction", instruction],
                 {"apply_chat_template": True, "fewshot_as_multiturn": True, "system_instruction": instruction}),
    }  # fmt: skip
    reports = {}
    for name, (flags, kwargs) in settings.items():
        out = tmp_path / name
        argv = ["eval", str(smollm2), "-o", str(out), "--tasks", ",".join(tasks), "--limit", str(limit),
                "--gen-kwargs", "max_gen_toks=8", *flags]  # fmt: skip
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0 and result.stdout == f"{out}\n", result.output[-3000:]
        ours = json.loads((out / "results.json").read_text())
        theirs = direct(
            {"pretrained": str(smollm2)}, tasks, limit=limit, gen_kwargs="max_gen_toks=8", **kwargs
        )
        assert ours["results"] == json.loads(json.dumps(theirs["results"], default=handle_non_serializable))
        assert (
            ours["configs"]["llmforge_arith"]["generation_kwargs"]["max_gen_toks"] == 8
        )  # over the task's 32
        assert ours["config"]["gen_kwargs"] == {"max_gen_toks": 8}
        reports[name] = (ours, " ".join(result.stderr.split()))

    plain, plain_log = reports["plain"]
    assert plain["chat_template"] is None and plain["llmforge"]["chat_template"] is False
    # an outside model whose name says Instruct: told how to score it in chat turns
    assert (
        "SmolLM2-135M-Instruct is chat-tuned (its name says so) but is scored on plain prompts" in plain_log
    )
    chat, chat_log = reports["chat"]
    assert "<|im_start|>" in chat["chat_template"] and chat["llmforge"]["chat_template"] is True
    assert chat["system_instruction"] == instruction and chat["fewshot_as_multiturn"] is True
    assert "SmolLM2-135M-Instruct: prompts in its chat template (few-shot examples as turns)" in chat_log
    assert plain["results"] != chat["results"]  # the prompts differed, and so did the model's answers
