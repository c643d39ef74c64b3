"""llmforge card: data and model cards from a real chain built on tiny inputs (crawl-filter -> dedup with
decontamination -> tokenize -> pretrain -> LoRA SFT -> eval); every figure checked is read back from a manifest."""

import re

import pytest
from helpers import chat_records, llmforge, stats_mismatches, write_jsonl
from warc_factory import prose

from llmforge.artifacts import Artifact
from llmforge.card import make_card
from llmforge.errors import InputError

QUESTION = "Which river flows through the old town before it reaches the harbour near the northern bridge?"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, one_thread):
    from llmforge.stages import crawl_filter, dedup, pretrain, sft, tokenize
    from llmforge.stages import eval as eval_stage

    root = tmp_path_factory.mktemp("card")
    records = [{"text": "\n\n".join(prose(seed)), "id": f"en-{seed}", "url": f"https://news.example/en/{seed}"}
               for seed in range(30)]  # fmt: skip
    records += [{"text": "\n\n".join(prose(100 + seed, "de")), "id": f"de-{seed}",
                 "url": f"https://news.example/de/{seed}"} for seed in range(3)]  # fmt: skip
    records += [{"text": "\n\n".join(prose(200 + seed, "fr")), "id": f"fr-{seed}",
                 "url": f"https://news.example/fr/{seed}"} for seed in range(2)]  # fmt: skip
    records.append({"text": "\n\n".join(prose(300)), "id": "blocked", "url": "https://spam-domain.com/a"})
    records.append({"text": "Write to jane.doe@mail-example.org today. " + "\n\n".join(prose(301)), "id": "pii",
                    "url": "https://news.example/pii"})  # fmt: skip
    records += [dict(records[n], id=f"mirror-{n}") for n in range(3)]
    records.append({"text": "\n\n".join(prose(302)) + f"\n\nQuiz of the week: {QUESTION}", "id": "quiz",
                    "url": "https://news.example/quiz"})  # fmt: skip
    raw = write_jsonl(root / "raw" / "crawl.jsonl", records)
    benchmark = write_jsonl(root / "quiz.jsonl", [{"id": "river", "question": QUESTION, "answer": "The Silver"},
                                                  {"id": "tiny", "question": "What is 2 + 2?", "answer": "4"}])  # fmt: skip

    docs = crawl_filter.run([str(raw)], root / "docs", crawl_filter.Config.model_validate({
        "url_filter": {"bundled_lists": False, "extra_domains": ["spam-domain.com"]},
        "language": {"languages": ["en", "de"]}, "executor": {"workers": 1}}))  # fmt: skip
    deduped = dedup.run([str(docs)], root / "dedup", [str(benchmark)], dedup.Config(executor={"workers": 1}))
    tok = tokenize.train([f"web={deduped}"], root / "tok", tokenize.TrainConfig(vocab_size=512))
    tokens = tokenize.encode([f"web={deduped}"], root / "tokens", tokenizer=tok,
                             config=tokenize.EncodeConfig(val_fraction=0.1, workers=1))  # fmt: skip
    base = pretrain.run(tokens, root / "base", pretrain.Config.model_validate({
        "model": {"preset": "tiny"}, "seq_len": 32, "batch_tokens": 256, "micro_batch_size": 8,
        "train_tokens": 256 * 3, "optim": {"lr": 3e-3, "warmup_steps": 1}, "eval": {"every": 3, "batches": 2}}))  # fmt: skip
    chats = write_jsonl(root / "chat.jsonl", chat_records(8))
    tuned = sft.run(base, chats, root / "sft", sft.Config.model_validate({
        "max_steps": 2, "batch_size": 4, "max_length": 64, "learning_rate": 1e-3,
        "lora": {"enabled": True, "rank": 4, "alpha": 8}}))  # fmt: skip
    report = eval_stage.run(
        [str(tuned)], root / "report", eval_stage.Config(tasks=["llmforge_arith_mc"], limit=4)
    )
    return {name: Artifact.open(path) for name, path in
            (("docs", docs), ("dedup", deduped), ("tok", tok), ("tokens", tokens), ("base", base), ("sft", tuned),
             ("report", report))}  # fmt: skip


def row(card: str, first: str, after: str = "") -> list[str]:
    """The cells of the first Markdown table row starting with `first` (after the text `after`)."""
    for line in card[card.index(after) :].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in the card")


def n(value) -> str:
    return f"{value:,}"


def test_data_card_reports_every_filter_dedup_step_and_the_mixture(chain):
    from huggingface_hub import DatasetCard

    card = make_card(chain["tokens"].path)
    docs, deduped, tok, tokens = (chain[k] for k in ("docs", "dedup", "tok", "tokens"))
    # the Hub's front matter, read back by huggingface_hub
    front = DatasetCard(card).data
    assert (
        front.pretty_name == "tokens"
        and front.language == ["en", "de"]
        and front.task_categories == ["text-generation"]
    )
    assert front.size_categories == "n<1K" and front.license is None
    assert front.tags == ["llmforge", "tokens", "crawl-filter", "dedup", "tokenize-train", "tokenize-encode"]
    assert "\n---\n\n# Data card: tokens\n" in card

    # raw input: its path, size and content fingerprint
    raw = docs.manifest["inputs"][0]
    assert row(card, f"`{raw['path']}`")[1:6] == [
        "raw",
        "crawl-filter",
        "1",
        n(raw["bytes"]),
        f"`{raw['fingerprint'][:16]}`",
    ]

    # crawl-filter: per filter in / out / removed, the languages kept, PII redactions
    filters = docs.stats["filters"]
    assert filters["url_filter"]["removed"] == 1 and filters["language"]["removed"] >= 2
    for name, counts in filters.items():
        assert row(card, name)[1:4] == [n(counts["in"]), n(counts["out"]), n(counts["removed"])]
    assert "language_fr" in row(card, "language")[4]
    assert "languages kept: en, de" in card
    assert f"PII redacted: {docs.stats['pii_redacted']['documents']} document(s); email 1" in card
    assert f"kept {n(docs.stats['documents'])} of {n(docs.stats['input']['documents'])} documents" in card

    # dedup: exact and near-duplicate removals, decontamination hits and the benchmark checked
    stats = deduped.stats
    assert stats["exact"]["removed"] == 3 and stats["decontamination"]["removed"] == 1
    for step in ("decontamination", "exact", "minhash"):
        assert row(card, step)[1:4] == [
            n(stats[step]["in"]),
            n(stats[step]["out"]),
            n(stats[step]["removed"]),
        ]
    assert "14 bands × 8 hashes" in row(card, "minhash")[4]  # the shape used, chosen for the default 0.8
    benchmark = deduped.extra["decontamination"]["benchmarks"][0]
    assert row(card, f"`{benchmark['path']}`")[1:4] == ["2", "1", "river"]
    assert "Note: 1 benchmark item(s) have fewer than 13 words" in card

    # tokenizer and tokens: vocabulary, fertility, tokens per source, validation split
    assert f"algorithm bpe, vocabulary {n(tok.stats['vocab_size'])} tokens" in card
    assert row(card, "all")[1:3] == [
        str(tok.stats["held_out"]["documents"]),
        f"{tok.stats['held_out']['bytes_per_token']:.4g}",
    ]
    source = tokens.stats["sources"]["web"]
    encoded = row(card, "web", after="tokenize encode →")
    assert encoded[3] == n(source["tokens"]) and encoded[-1] == n(source["val_tokens"])
    assert (f"validation split: 10% of each source's documents held out → {n(tokens.stats['val_tokens'])} tokens "
            f"in {n(tokens.stats['val_documents'])} documents") in card  # fmt: skip
    assert (
        f"dedup {n(stats['input']['documents'])} → {n(stats['documents'])}" in card
    )  # the funnel in the summary


def test_model_card_has_front_matter_training_chain_data_and_eval_scores(chain):
    import yaml

    card = make_card(chain["sft"].path)
    base, tuned, report = chain["base"], chain["sft"], chain["report"]
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["library_name"] == "peft" and "license" not in front
    # an adapter on a model pretrained here: no Hub id to name as base_model (the Hub takes only its own ids)
    assert "base_model" not in front and "base_model_relation" not in front
    assert row(card, "base model")[1] == "`base`"
    assert front["datasets"] == ["tokens", "chat.jsonl"] and {"pretrain", "sft", "lora"} <= set(front["tags"])

    # architecture and size from the model itself
    assert row(card, "base model parameters")[1] == n(base.stats["parameters"])
    assert row(card, "layers")[1] == "4"
    # the chain, with each stage's settings and final losses
    assert "Chain: pretrain (`base`) → sft (`sft`)" in card
    assert row(card, "tokens seen")[1].startswith(n(base.stats["tokens"]))
    assert row(card, "steps")[1] == n(base.stats["steps"])
    assert (
        row(card, "loss (first → final)")[1]
        == f"{base.stats['loss_first']:.4g} → {base.stats['loss_final']:.4g}"
    )
    assert row(card, "method")[1].startswith("LoRA rank 4, alpha 8")
    assert (
        row(card, "loss (first → final)", after="### sft →")[1]
        == f"{tuned.stats['loss_first']:.4g} → {tuned.stats['loss_final']:.4g}"
    )
    # eval scores from the report next to it
    score = report.stats["scores"]["llmforge_arith_mc"]["acc,none"]
    assert re.search(rf"\| llmforge_arith_mc \| acc \| {score:.4g} \|", card)
    assert "Eval reports (found next to the model)" in card and "limit 4" in card
    # the training data, nested: the pretraining tokens' data card and the SFT file
    assert "### pretrain data: `tokens`" in card and "#### Processing" in card
    assert row(card, "sft")[1:3] == [f"`{tuned.manifest['inputs'][1]['path']}`", "raw"]
    assert "Documents through each stage: crawl-filter" in card


def test_cards_read_the_stats_keys_the_stages_write(chain):
    """Each stage declares its stats next to the code that writes them and the card reads only those keys: a key
    renamed on either side fails here (or in the dpo, grpo and quantize tests) instead of blanking a card row."""
    from llmforge.card.stages import STATS, stats_of
    from llmforge.card.stats import UndeclaredStat, mismatches

    for artifact in chain.values():
        assert stats_mismatches(artifact.path) == [], artifact.stage
    assert set(STATS) - {a.stage for a in chain.values()} == {  # in their own tests
        "dpo", "grpo", "reward", "quantize", "quality train", "quality filter", "quality annotate"}  # fmt: skip

    # a writer renaming a key: its manifest no longer matches the declaration
    renamed = dict(chain["sft"].stats)
    renamed["loss_end"] = renamed.pop("loss_final")
    assert mismatches(renamed, STATS["sft"]) == [
        "stats.loss_end: written, not declared in stages.sft.Stats",
        "stats.loss_final: declared in stages.sft.Stats, not written",
    ]
    # the card reading a key that no stage declares: an error, whether a manifest holds it or not
    with pytest.raises(UndeclaredStat, match="sft: 'loss_end' is not a stats key of stages.sft.Stats"):
        stats_of(chain["sft"]).get("loss_end")
    with pytest.raises(UndeclaredStat, match="dedup.minhash: 'bands' is not a stats key"):
        stats_of(chain["dedup"])["minhash"].get("bands")
    assert stats_of(chain["dedup"])["minhash"]["buckets"] == chain["dedup"].stats["minhash"]["buckets"]


def test_cli_writes_a_file_and_takes_explicit_reports(chain, tmp_path):
    out = tmp_path / "cards" / "sft.md"
    result = llmforge(
        "card", chain["sft"].path, "--eval", chain["report"].path, "-o", out, "--license", "apache-2.0"
    )
    assert result.stdout == f"{out}\n"  # stdout: the path only
    text = out.read_text()
    assert "license: apache-2.0" in text and "Eval reports (given with --eval)" in text

    # bad input: one line, exit 2 (in process: the same typer app, without a fresh interpreter each time)
    from typer.testing import CliRunner

    from llmforge.cli import app

    runner = CliRunner()
    for args, message in (
        ((tmp_path,), "not an llmforge artifact"),
        ((chain["report"].path,), "is an eval-report artifact"),
        ((chain["tokens"].path, "--eval", chain["report"].path), "--eval is for model cards"),
        ((chain["base"].path, "--eval", chain["report"].path), "evaluates none of base"),
        ((chain["sft"].path, "-o", chain["sft"].path / "README.md"), "must not change"),
    ):
        failed = runner.invoke(app, ["card", *map(str, args)])
        assert failed.exit_code == 2 and failed.stdout == "", failed.output
        assert failed.stderr.startswith("error: ") and message in " ".join(failed.stderr.split()), (
            failed.stderr
        )
    assert not (chain["sft"].path / "README.md").exists()
    assert "card" in runner.invoke(app, ["--help"]).stdout


def test_unfinished_artifacts_are_refused(tmp_path):
    (tmp_path / "out.partial").mkdir()
    with pytest.raises(InputError, match="unfinished run"):
        make_card(tmp_path / "out")
