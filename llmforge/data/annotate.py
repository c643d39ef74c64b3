"""Annotation with a local instruct model, as FineWeb-Edu made the labels of its classifier: the model reads a sample
of documents with the additive 0-5 educational rubric (Penedo et al. 2024, appendix) and ends its answer with
"Educational score: N"; the score is parsed from that line.

A reply without a parseable score (small models ramble, or run out of tokens) is scored by a forced answer: the
reply is followed by "Educational score:" and the likeliest of the digits 0-5 is taken, from one forward pass
(constrained decoding, as lm-eval scores multiple choice). With `justify` off, only that forced answer is asked for:
no generation at all, about a hundred times cheaper. Each record says where its score came from.

Generation runs through the embedded server's engine (llmforge.serving.engine: continuous batching, greedy here),
in chunks of CHUNK documents; each finished chunk is written to OUT.partial/parts/, so an interrupted run keeps
them and a re-run generates only the rest.
"""

from __future__ import annotations

import json
import os
import queue
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmforge.errors import InputError, LLMForgeError

SCORE_KEY = "edu_score"  # metadata key of the score, 0-5 (null: none could be had)
REPLY_KEY = "edu_reply"  # metadata key of the model's whole answer, for auditing
FROM_KEY = "edu_score_from"  # "reply": parsed from the answer; "forced": the likeliest digit after ANSWER
ANSWER = "Educational score:"
CHUNK = 32  # documents generated, then written, at a time (the unit of resume)

# FineWeb-Edu's annotation prompt (the additive 5-point rubric), with {extract} for the document.
PROMPT = """Below is an extract from a web page. Evaluate whether the page has a high educational value and could \
be useful in an educational setting for teaching from primary school to grade school levels using the additive \
5-point scoring system described below. Points are accumulated based on the satisfaction of each criterion:

- Add 1 point if the extract provides some basic information relevant to educational topics, even if it includes \
some irrelevant or non-academic content like advertisements and promotional material.
- Add another point if the extract addresses certain elements pertinent to education but does not align closely \
with educational standards. It might mix educational content with non-educational material, offering a \
superficial overview of potentially useful topics, or presenting information in a disorganized manner and \
incoherent writing style.
- Award a third point if the extract is appropriate for educational use and introduces key concepts relevant to \
school curricula. It is coherent though it may not be comprehensive or could include some extraneous information. \
It may resemble an introductory section of a textbook or a basic tutorial that is suitable for learning but has \
notable limitations like treating concepts that are too complex for grade school students.
- Grant a fourth point if the extract highly relevant and beneficial for educational purposes for a level not \
higher than grade school, exhibiting a clear and consistent writing style. It could be similar to a chapter from a \
textbook or a tutorial, offering substantial educational content, including exercises and solutions, with minimal \
irrelevant information, and the concepts aren't too advanced for grade school students. The content is coherent, \
focused, and valuable for structured learning.
- Bestow a fifth point if the extract is outstanding in its educational value, perfectly suited for teaching \
either at primary school or grade school. It follows detailed reasoning, the writing style is easy to follow and \
offers profound and thorough insights into the subject matter, devoid of any non-educational or complex content.

The extract:
{extract}

After examining the extract:
- Briefly justify your total score, up to 100 words.
- Conclude with the score using the format: "Educational score:  <total points>\""""

# "Educational score: 3", also "**Educational score:** 3", "educational score: 3/5"; the last one counts.
SCORE_PATTERN = re.compile(r"educational\s+score\s*:?\s*\**\s*:?\s*([0-5])(?![\d.,])", re.IGNORECASE)


def parse_score(reply: str) -> int | None:
    """The score the reply concludes with, 0-5; None when it gives none in the asked format."""
    found = SCORE_PATTERN.findall(reply)
    return int(found[-1]) if found else None


def sample_documents(documents, size: int, seed: int) -> tuple[list, int]:
    """A uniform random sample of `size` documents (reservoir sampling, one pass), in input order; and how many
    documents there were."""
    rng = random.Random(seed)
    chosen: list[tuple[int, object]] = []
    seen = 0
    for seen, document in enumerate(documents, 1):
        if not document.text.strip():
            continue
        if len(chosen) < size:
            chosen.append((seen, document))
        else:
            slot = rng.randint(0, seen - 1)
            if slot < size:
                chosen[slot] = (seen, document)
    return [document for _, document in sorted(chosen, key=lambda pair: pair[0])], seen


@dataclass
class Annotator:
    """A model loaded once and an engine generating for it; `score` annotates a list of documents."""

    model: object
    tokenizer: object
    engine: object
    max_tokens: int  # 0: no reply, the forced answer only
    max_document_tokens: int
    counts: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "truncated": 0})

    def prompt_ids(self, text: str, count: bool = True) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        overhead = len(self.render(""))
        room = min(self.max_document_tokens, self.engine.max_model_len - self.max_tokens - overhead - 1)
        if room < 16:
            raise InputError(f"the model's context ({self.engine.max_model_len} tokens) leaves no room for a "
                             f"document beside the rubric and {self.max_tokens} answer tokens; lower max_tokens")  # fmt: skip
        if len(ids) > room:
            self.counts["truncated"] += count
            text = self.tokenizer.decode(ids[:room])
        return self.render(text)

    def render(self, extract: str) -> list[int]:
        messages = [{"role": "user", "content": PROMPT.format(extract=extract)}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def score(self, texts: list[str]) -> list[str]:
        """The model's replies to the rubric for each text, greedy, generated as one continuous batch."""
        from llmforge.serving.engine import GenerationRequest, SamplingParams

        events: queue.Queue = queue.Queue()
        replies = [""] * len(texts)
        if not self.max_tokens:
            return replies
        for number, text in enumerate(texts):
            ids = self.prompt_ids(text)
            self.counts["prompt_tokens"] += len(ids)
            params = SamplingParams(max_tokens=self.max_tokens, temperature=0.0)
            self.engine.submit(
                GenerationRequest(ids, params, on_event=lambda e, n=number: events.put((n, e)))
            )
        finished = 0
        while finished < len(texts):
            number, event = events.get()
            replies[number] += event.text
            if event.finish_reason:
                if event.finish_reason in ("error", "cancelled"):
                    raise LLMForgeError(f"generation failed: {event.error}")
                self.counts["completion_tokens"] += event.completion_tokens
                finished += 1
        return replies

    def digit_ids(self) -> tuple[str, list[int]]:
        """The answer prefix ("Educational score:" with or without its space, as the tokenizer splits it) and the
        token of each score 0-5 right after it (one token each, or forcing cannot work)."""
        for prefix, gap in ((ANSWER, " "), (ANSWER + " ", "")):
            base = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            fulls = [
                self.tokenizer(f"{prefix}{gap}{d}", add_special_tokens=False)["input_ids"] for d in "012345"
            ]
            if all(full[: len(base)] == base and len(full) == len(base) + 1 for full in fulls):
                return prefix, [full[-1] for full in fulls]
        raise InputError(
            f"the tokenizer does not make each score after '{ANSWER}' one token; forced scores need it"
        )

    def forced(self, texts: list[str], replies: list[str]) -> list[int]:
        """The likeliest digit 0-5 after each reply and ANSWER: one batched forward pass (left-padded)."""
        import torch

        prefix, digits = self.digit_ids()
        rows = [self.prompt_ids(text, count=False)
                + self.tokenizer((reply.rstrip() + "\n\n" if reply.strip() else "") + prefix,
                                 add_special_tokens=False)["input_ids"]
                for text, reply in zip(texts, replies, strict=True)]  # fmt: skip
        rows = [row[-self.engine.max_model_len :] for row in rows]
        self.counts["prompt_tokens"] += sum(len(row) for row in rows)
        width = max(len(row) for row in rows)
        pad = self.engine.pad_id
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in rows])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1, :]
        return [int(i) for i in logits[:, digits].float().argmax(-1)]

    def close(self) -> None:
        self.engine.stop()


def load_annotator(
    source, max_tokens: int, max_document_tokens: int, batch_size: int, stage: str
) -> Annotator:
    """The model of `source` (llmforge.model.loading.ModelSource) behind a started engine."""
    from llmforge.model.loading import load_model, load_tokenizer
    from llmforge.serving.embedded import generation_defaults
    from llmforge.serving.engine import Engine

    tokenizer = load_tokenizer(source)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{source.path}: the tokenizer has no chat template; {stage} needs an instruct (chat) model"
        )
    model = load_model(source, dtype="float32")
    model.eval()
    _, eos_ids = generation_defaults(model)
    if not eos_ids and tokenizer.eos_token_id is not None:
        eos_ids = [tokenizer.eos_token_id]
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    engine = Engine(model, tokenizer, eos_ids, context, batch_size)
    engine.start()
    return Annotator(model, tokenizer, engine, max_tokens, max_document_tokens)


def annotate_documents(documents: list, annotator: Annotator, parts: Path) -> tuple[list[dict], int]:
    """Records for `documents` ({"text", "id", "metadata": {..., edu_score, edu_reply}}), chunk by chunk; chunks
    already in `parts` (an interrupted run of the same fingerprint) are read back. Returns the records and the
    number of chunks re-used."""
    from llmforge.console import progress

    parts.mkdir(parents=True, exist_ok=True)
    records, reused = [], 0
    with progress() as bar:
        task = bar.add_task("annotating", total=len(documents), unit="docs")
        for start in range(0, len(documents), CHUNK):
            chunk = documents[start : start + CHUNK]
            part = parts / f"{start // CHUNK:05d}.jsonl"
            if part.is_file():
                done = [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
                if len(done) == len(chunk):
                    records += done
                    reused += 1
                    bar.advance(task, len(chunk))
                    continue
            texts = [d.text for d in chunk]
            replies = annotator.score(texts)
            scores = [parse_score(r) for r in replies]
            unparsed = [n for n, score in enumerate(scores) if score is None]
            sources = ["reply" if score is not None else "forced" for score in scores]
            for start_at in range(0, len(unparsed), annotator.engine.max_batch_size):
                numbers = unparsed[start_at : start_at + annotator.engine.max_batch_size]
                forced = annotator.forced([texts[n] for n in numbers], [replies[n] for n in numbers])
                for n, score in zip(numbers, forced, strict=True):
                    scores[n] = score
            made = [{"text": d.text, "id": d.id,
                     "metadata": {**(d.metadata or {}), SCORE_KEY: score, FROM_KEY: source, REPLY_KEY: reply}}
                    for d, score, source, reply in zip(chunk, scores, sources, replies, strict=True)]  # fmt: skip
            staging = part.with_suffix(".tmp")
            staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in made))
            os.replace(staging, part)  # a chunk is there whole or not at all
            records += made
            bar.advance(task, len(chunk))
    return records, reused


def score_stats(records: list[dict]) -> dict:
    """How many replies gave a score (the others were forced), and the distribution of the scores."""
    scores = [r["metadata"][SCORE_KEY] for r in records if r["metadata"][SCORE_KEY] is not None]
    parsed = sum(r["metadata"][FROM_KEY] == "reply" for r in records)
    return {
        "documents": len(records),
        "parsed": parsed,
        "forced": len(records) - parsed,
        "score_counts": {str(s): scores.count(s) for s in range(6)},
        "mean_score": round(sum(scores) / len(scores), 3) if scores else None,
    }
