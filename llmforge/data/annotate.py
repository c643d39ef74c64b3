"""Annotation with a local instruct model, as FineWeb-Edu made the labels of its classifier: the model reads a sample
of documents with the additive 0-5 educational rubric (Penedo et al. 2024, appendix) and ends its answer with
"Educational score: N"; the score is parsed from that line.

A reply without a parseable score (small models ramble, or run out of tokens) is scored by a forced answer: the
reply is followed by "Educational score:" and the likeliest of the digits 0-5 is taken, from one forward pass
(constrained decoding, as lm-eval scores multiple choice). With `justify` off, only that forced answer is asked for:
no generation at all, about a hundred times cheaper. Each record says where its score came from.

Generation is greedy and runs on one of two backends: the embedded server's engine in this process
(llmforge.serving.engine: continuous batching, on the CPU), or vLLM's own server, started for the run from vLLM's
environment as `serve --backend vllm` starts it (paged attention: what a GPU and a large sample need). vLLM is sent
the very token ids the engine would get; the forced answer is a one-token completion restricted to the six digit
tokens (`allowed_token_ids`), the same argmax as the engine's forward pass.

Documents go in chunks of CHUNK; each finished chunk is written to OUT.partial/parts/, so an interrupted run
keeps them and a re-run generates only the rest. With a batch larger than a chunk, several chunks are generated
together.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
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


class EngineGeneration:
    """The model in this process behind the embedded server's engine."""

    def __init__(self, model, tokenizer, eos_ids: list[int], context: int, batch_size: int):
        from llmforge.serving.engine import Engine

        self.model, self.name = model, "embedded"
        self.engine = Engine(model, tokenizer, eos_ids, context, batch_size)
        self.engine.start()
        self.max_model_len, self.batch_size = context, batch_size

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[tuple[str, int]]:
        """Each prompt's greedy continuation and its token count, generated as one continuous batch."""
        from llmforge.serving.engine import GenerationRequest, SamplingParams

        events: queue.Queue = queue.Queue()
        replies = [["", 0] for _ in prompts]
        for number, ids in enumerate(prompts):
            params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
            self.engine.submit(
                GenerationRequest(ids, params, on_event=lambda e, n=number: events.put((n, e)))
            )
        finished = 0
        while finished < len(prompts):
            number, event = events.get()
            replies[number][0] += event.text
            if event.finish_reason:
                if event.finish_reason in ("error", "cancelled"):
                    raise LLMForgeError(f"generation failed: {event.error}")
                replies[number][1] = event.completion_tokens
                finished += 1
        return [(text, tokens) for text, tokens in replies]

    def choose(self, prompts: list[list[int]], token_ids: list[int]) -> list[int]:
        """For each prompt, which of `token_ids` is likeliest next: a forward pass per batch (left-padded)."""
        size = self.batch_size
        return [
            i
            for start in range(0, len(prompts), size)
            for i in self._choose(prompts[start : start + size], token_ids)
        ]

    def _choose(self, prompts: list[list[int]], token_ids: list[int]) -> list[int]:
        import torch

        width = max(len(row) for row in prompts)
        pad = self.engine.pad_id
        ids = torch.tensor([[pad] * (width - len(row)) + row for row in prompts])
        mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in prompts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1, :]
        return [int(i) for i in logits[:, token_ids].float().argmax(-1)]

    def close(self) -> None:
        self.engine.stop()


class ServerGeneration:
    """vLLM's OpenAI server (started with `--max-num-seqs` batch_size), sent token ids (`/v1/completions` takes
    them as the prompt) from a pool of threads; its scheduler batches the requests as the engine would."""

    def __init__(
        self, url: str, api_key: str, model_name: str, context: int, batch_size: int, tokenizer, name: str
    ):
        import httpx

        self.url, self.model_name, self.tokenizer, self.name = url, model_name, tokenizer, name
        self.max_model_len, self.batch_size = context, batch_size
        self.client = httpx.Client(headers={"Authorization": f"Bearer {api_key}"}, timeout=3600)

    def complete(self, prompt: list[int], **settings) -> dict:
        import httpx

        body = {"model": self.model_name, "prompt": prompt, "temperature": 0.0, **settings}
        try:
            response = self.client.post(f"{self.url}/completions", json=body)
        except httpx.HTTPError as exc:
            raise LLMForgeError(f"{self.name} at {self.url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise LLMForgeError(f"{self.name} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    def map(self, function, items: list) -> list:
        from concurrent.futures import ThreadPoolExecutor

        # twice the server's batch in flight: a finished sequence's place is taken from vLLM's queue at once
        with ThreadPoolExecutor(2 * self.batch_size) as pool:
            return list(pool.map(function, items))

    def generate(self, prompts: list[list[int]], max_tokens: int) -> list[tuple[str, int]]:
        answers = self.map(lambda ids: self.complete(ids, max_tokens=max_tokens), prompts)
        return [(a["choices"][0]["text"], a["usage"]["completion_tokens"]) for a in answers]

    def choose(self, prompts: list[list[int]], token_ids: list[int]) -> list[int]:
        texts = [self.tokenizer.decode([token]) for token in token_ids]
        answers = self.map(lambda ids: self.complete(ids, max_tokens=1, allowed_token_ids=token_ids), prompts)
        chosen = [a["choices"][0]["text"] for a in answers]
        if unknown := [text for text in chosen if text not in texts]:
            raise LLMForgeError(f"{self.name} answered {unknown[0]!r}, not one of the allowed tokens {texts}")
        return [texts.index(text) for text in chosen]

    def close(self) -> None:
        self.client.close()


def rubric_ids(tokenizer, extract: str) -> list[int]:
    """The prompt's token ids: the rubric around `extract`, as a user turn in the model's chat template."""
    messages = [{"role": "user", "content": PROMPT.format(extract=extract)}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass
class Annotator:
    """The rubric rendered for a model's tokenizer, and a backend generating for it (`EngineGeneration` or
    `ServerGeneration`); `score` annotates a list of documents."""

    tokenizer: object
    generation: EngineGeneration | ServerGeneration
    max_tokens: int  # 0: no reply, the forced answer only
    max_document_tokens: int
    counts: dict = field(default_factory=lambda: {"prompt_tokens": 0, "completion_tokens": 0, "truncated": 0})

    @functools.cached_property
    def rubric_tokens(self) -> int:
        """The prompt's tokens besides the document's."""
        return len(self.render(""))

    def prompt_ids(self, text: str, count: bool = True) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        context = self.generation.max_model_len
        room = min(self.max_document_tokens, context - self.max_tokens - self.rubric_tokens - 1)
        if room < 16:
            raise InputError(f"the model's context ({context} tokens) leaves no room for a document beside the "
                             f"rubric and {self.max_tokens} answer tokens; lower max_tokens")  # fmt: skip
        if len(ids) > room:
            self.counts["truncated"] += count
            text = self.tokenizer.decode(ids[:room])
        return self.render(text)

    def render(self, extract: str) -> list[int]:
        return rubric_ids(self.tokenizer, extract)

    def score(self, texts: list[str]) -> list[str]:
        """The model's replies to the rubric for each text, greedy."""
        if not self.max_tokens:
            return [""] * len(texts)
        prompts = [self.prompt_ids(text) for text in texts]
        self.counts["prompt_tokens"] += sum(len(ids) for ids in prompts)
        replies = self.generation.generate(prompts, self.max_tokens)
        self.counts["completion_tokens"] += sum(tokens for _, tokens in replies)
        return [text for text, _ in replies]

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
        """The likeliest digit 0-5 after each reply and ANSWER."""
        prefix, digits = self.digit_ids()
        rows = [self.prompt_ids(text, count=False)
                + self.tokenizer((reply.rstrip() + "\n\n" if reply.strip() else "") + prefix,
                                 add_special_tokens=False)["input_ids"]
                for text, reply in zip(texts, replies, strict=True)]  # fmt: skip
        # the newest tokens, and room for the answer (vLLM refuses a prompt that fills its context)
        rows = [row[-(self.generation.max_model_len - 1) :] for row in rows]
        self.counts["prompt_tokens"] += sum(len(row) for row in rows)
        return self.generation.choose(rows, digits)


@contextmanager
def open_annotator(source, backend: str, max_tokens: int, max_document_tokens: int, batch_size: int,
                   stage: str, tensor_parallel_size: int = 1) -> Iterator[Annotator]:  # fmt: skip
    """An Annotator for the model of `source` (llmforge.model.loading.ModelSource) on `backend` (embedded or
    vllm), for the duration of the block: vLLM's server runs until it ends."""
    from llmforge.model.loading import load_tokenizer

    tokenizer = load_tokenizer(source)
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            f"{source.path}: the tokenizer has no chat template; {stage} needs an instruct (chat) model"
        )
    if backend == "vllm":
        serving, config = vllm_serving(source, tokenizer, max_tokens, max_document_tokens, batch_size,
                                       tensor_parallel_size)  # fmt: skip
        with _vllm_generation(source, serving, config, tokenizer) as generation:
            yield Annotator(tokenizer, generation, max_tokens, max_document_tokens)
        return
    from llmforge.model.loading import load_model
    from llmforge.serving.embedded import generation_defaults

    model = load_model(source, dtype="float32")
    model.eval()
    _, eos_ids = generation_defaults(model.generation_config, model.config.eos_token_id)
    if not eos_ids and tokenizer.eos_token_id is not None:
        eos_ids = [tokenizer.eos_token_id]
    context = int(getattr(model.config, "max_position_embeddings", 2048))
    generation = EngineGeneration(model, tokenizer, eos_ids, context, batch_size)
    try:
        yield Annotator(tokenizer, generation, max_tokens, max_document_tokens)
    finally:
        generation.close()


def vllm_serving(source, tokenizer, max_tokens: int, max_document_tokens: int, batch_size: int,
                 tensor_parallel_size: int):  # fmt: skip
    """What vLLM serves for annotation (the model; an adapter on its base, by name) and its server settings. Its
    context is what a prompt can need (the rubric, the longest document, the reply, the forced answer), not the
    model's whole one (128k tokens for Llama 3.1): vLLM sizes its KV cache to hold at least one full context."""
    from llmforge.serving import models as serving_models
    from llmforge.serving import vllm_backend
    from llmforge.stages.serve import Config as ServeConfig

    serving = serving_models.plan(source.path, None, {})
    context = int(vllm_backend.model_settings(serving.base.path).get("max_position_embeddings") or 2048)
    # the forced answer adds a blank line and "Educational score:" to the reply, then one token
    needed = len(rubric_ids(tokenizer, "")) + max_document_tokens + max_tokens + 32
    config = ServeConfig(port=0, max_model_len=min(context, needed), max_batch_size=batch_size,
                         tensor_parallel_size=tensor_parallel_size, log_level="warning")  # fmt: skip
    return serving, config


@contextmanager
def _vllm_generation(source, serving, config, tokenizer) -> Iterator[ServerGeneration]:
    """vLLM's server, as serve starts it, for the block."""
    from llmforge.serving import vllm_backend

    found = vllm_backend.runtime(explicit=True)
    with vllm_backend.running(serving, config, source.fingerprint, found) as (url, key):
        generation = ServerGeneration(url, key, serving.models[0].name, config.max_model_len, config.max_batch_size,
                                      tokenizer, found.label)  # fmt: skip
        try:
            yield generation
        finally:
            generation.close()


def annotate_documents(documents: list, annotator: Annotator, parts: Path) -> tuple[list[dict], int]:
    """Records for `documents` ({"text", "id", "metadata": {..., edu_score, edu_reply}}), chunk by chunk; chunks
    already in `parts` (an interrupted run of the same fingerprint) are read back. Returns the records and the
    number of chunks re-used."""
    from llmforge.console import progress

    parts.mkdir(parents=True, exist_ok=True)
    chunks = [documents[start : start + CHUNK] for start in range(0, len(documents), CHUNK)]
    per_round = max(1, annotator.generation.batch_size // CHUNK)  # chunks generated together
    done: dict[int, list[dict]] = {}
    pending: list[int] = []
    reused = 0
    with progress() as bar:
        task = bar.add_task("annotating", total=len(documents), unit="docs")
        for number, chunk in enumerate(chunks):
            part = parts / f"{number:05d}.jsonl"
            if part.is_file():
                kept = [json.loads(line) for line in part.read_text().splitlines() if line.strip()]
                if len(kept) == len(chunk):
                    done[number] = kept
                    reused += 1
                    bar.advance(task, len(chunk))
                    continue
            pending.append(number)
            if len(pending) == per_round:
                _annotate_chunks({n: chunks[n] for n in pending}, annotator, parts, done, bar, task)
                pending = []
        if pending:
            _annotate_chunks({n: chunks[n] for n in pending}, annotator, parts, done, bar, task)
    return [record for number in sorted(done) for record in done[number]], reused


def _annotate_chunks(
    chunks: dict[int, list], annotator: Annotator, parts: Path, done: dict, bar, task
) -> None:
    """Score the documents of several chunks together; write each chunk whole (a temporary file renamed)."""
    documents = [d for chunk in chunks.values() for d in chunk]
    texts = [d.text for d in documents]
    replies = annotator.score(texts)
    scores = [parse_score(r) for r in replies]
    unparsed = [n for n, score in enumerate(scores) if score is None]
    sources = ["reply" if score is not None else "forced" for score in scores]
    if unparsed:
        forced = annotator.forced([texts[n] for n in unparsed], [replies[n] for n in unparsed])
        for n, score in zip(unparsed, forced, strict=True):
            scores[n] = score
    made = [{"text": d.text, "id": d.id,
             "metadata": {**(d.metadata or {}), SCORE_KEY: score, FROM_KEY: source, REPLY_KEY: reply}}
            for d, score, source, reply in zip(documents, scores, sources, replies, strict=True)]  # fmt: skip
    for number, chunk in chunks.items():
        records, made = made[: len(chunk)], made[len(chunk) :]
        part = parts / f"{number:05d}.jsonl"
        staging = part.with_suffix(".tmp")
        staging.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        os.replace(staging, part)  # a chunk is there whole or not at all
        done[number] = records
        bar.advance(task, len(chunk))


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
