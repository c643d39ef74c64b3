"""The embedded server's generation engine: continuous batching over a transformers model on CPU.

One background thread owns the model. Every iteration it prefills the requests that arrived since the last one
(left-padded into one forward pass), merges them into the running batch's KV cache, and then advances every
running sequence by one token in a single batched forward. Each sequence samples with its own temperature,
top_p and seeded generator, and stops on its own (EOS, stop strings, max_tokens, the context length, or a
cancellation when its client went away, a grammar that is complete); finished rows leave the batch at once, so
a long answer never holds back the others. Rows are left-padded; every row carries explicit position ids, so
padding never shifts RoPE. Text is decoded incrementally (tokenizers' DecodeStream), log-probabilities of the
answer and of the prompt (echo) come from the same forward passes, and a request's `constraint` (serving/grammar.py)
masks the logits before sampling.

Why our own engine rather than transformers' continuous batching (`model.generate_batch` /
`init_continuous_batching`, transformers 5.17): it does what that lacks, a seed per request (transformers seeds its
whole manager once, so a sampled answer there depends on what else is in the batch), several LoRA adapters in one
batch (peft's `adapter_names`), stop strings and `min_tokens`; and it costs nothing in speed: on CPU the two
measured on par, 0.84-1.21x of `generate_batch`'s tokens/s in three runs on the same model and prompts with
identical greedy answers (bench/bench_engine.py; figures in bench/RESULTS.md). Both can cancel a request
(transformers has `cancel_request`); here a client that disconnects cancels its row at the next step.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llmforge.console import log

# peft's name for "no adapter" in a mixed-adapter batch
BASE_ADAPTER = "__base__"


def limit_openmp_spinning() -> None:
    """Call before torch or llama.cpp is loaded. The engine runs its model in a thread of its own, and OpenMP's
    worker threads wait between operations. Waiting passively (asleep at once) halved the embedded server's speed on
    an idle machine (SmolLM2-135M, one client: 17 against 30 tokens/s; llama.cpp, whose threads meet after every
    operation: 30 against 94), and spinning long cost a fifth on a busy one (8 against 10). A short spin before
    sleeping keeps the best of both (29.5 idle, 9.9 busy; measured on 2 cores)."""
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: every token
    min_p: float = 0.0
    # vLLM's order: the penalties change the logits first (greedy answers too), then temperature, min_p, top_k,
    # top_p. repetition_penalty: on prompt and answer tokens, positive logits divided by it, negative multiplied
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0  # subtracted once from a token the answer holds
    frequency_penalty: float = 0.0  # subtracted for every time the answer holds it
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None  # None: none; k: each sampled token's log-probability and the k most likely
    prompt_logprobs: int | None = None  # the same for every prompt token after the first (echo)
    skip_special_tokens: bool = True
    constraint: Any = None  # a serving.grammar.Constraint: a logits mask that follows what was generated


# (token id, its log-probability, the k most likely (token id, log-probability) at that step)
TokenLogprob = tuple[int, float, list[tuple[int, float]]]


@dataclass
class Event:
    """What a request's consumer receives: text deltas, then one final event with the finish reason. Each
    event carries the log-probabilities of the tokens generated since the previous one (when asked for)."""

    text: str = ""
    finish_reason: str | None = None  # stop | length | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens an engine with prefix caching did not compute again
    error: str | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None  # on the first event; None for the first token


_ids = itertools.count(1)


@dataclass
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    on_event: Callable[[Event], None]  # called from the engine thread
    adapter: str | None = None
    id: int = field(default_factory=lambda: next(_ids))
    cancelled: threading.Event = field(default_factory=threading.Event)
    # engine-side state
    output_ids: list[int] = field(default_factory=list)
    cached_tokens: int = 0
    text: str = ""
    sent: int = 0  # characters of `text` already delivered
    generator: Any = None
    decoder: Any = None  # tokenizers' DecodeStream: only the new token is decoded at each step
    held: bool = False  # the decoder holds bytes it could not turn into text yet
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None

    def cancel(self) -> None:
        self.cancelled.set()


class Engine:
    """Continuous batching for one transformers causal LM (optionally a peft model holding several adapters)."""

    def __init__(self, model, tokenizer, eos_token_ids: list[int], max_model_len: int, max_batch_size: int = 16,
                 log_batches: bool = False, vocab_size: int | None = None):  # fmt: skip
        import torch

        self.model, self.tokenizer = model, tokenizer
        self.eos_token_ids = set(eos_token_ids)
        self.max_model_len, self.max_batch_size = max_model_len, max_batch_size
        self.log_batches = log_batches
        self.is_peft = hasattr(model, "peft_config")
        # peft's LoRA on a mixture of experts' expert tensors (its ParamWrapper) cannot serve several adapters in one
        # batch: such a model runs one adapter (or the base) at a time, newcomers for another waiting their turn
        self.mixed_adapters = not (
            self.is_peft and any(type(m).__name__ == "ParamWrapper" for m in model.modules())
        )
        self.prefix_caching = False  # usage reports cached prompt tokens only for an engine that caches them
        # the logits' width
        self.vocab_size = vocab_size or model.get_output_embeddings().weight.shape[0]
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        # the Rust tokenizer, for incremental decoding (a slow tokenizer falls back to decoding the whole answer)
        self._backend = getattr(tokenizer, "backend_tokenizer", None)
        self.waiting: queue.Queue[GenerationRequest] = queue.Queue()
        self.stats: dict[str, Any] = {"requests": 0, "finished": 0, "cancelled": 0, "prompt_tokens": 0,
                                      "completion_tokens": 0, "prefills": 0, "decode_steps": 0,
                                      "max_batch_size": 0, "batch_sizes": Counter()}  # fmt: skip
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llmforge-engine", daemon=True)
        # the running batch
        self._rows: list[GenerationRequest] = []
        self._cache = None
        self._mask = torch.zeros((0, 0), dtype=torch.long)
        self._positions = torch.zeros(0, dtype=torch.long)
        self._next = torch.zeros(0, dtype=torch.long)  # each row's last token, fed at the next step
        self._mergeable = True
        self._held: GenerationRequest | None = None  # taken from the queue, waiting for room (_fits) to start

    # -- public API (any thread) ----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.waiting.put(None)  # wake the loop
        self._thread.join(timeout=30)

    def submit(self, request: GenerationRequest) -> None:
        if len(request.prompt_ids) + 1 > self.max_model_len:
            raise ValueError(
                f"prompt of {len(request.prompt_ids)} tokens leaves no room in {self.max_model_len}"
            )
        self.stats["requests"] += 1
        self.waiting.put(request)

    def snapshot(self) -> dict[str, Any]:
        stats = dict(self.stats)
        stats["batch_sizes"] = {str(k): v for k, v in sorted(self.stats["batch_sizes"].items())}
        stats["running"] = len(self._rows)
        stats["waiting"] = self.waiting.qsize() + (self._held is not None)
        return stats

    # -- the loop (engine thread) ---------------------------------------------------------------------------
    def _loop(self) -> None:
        import torch

        with torch.inference_mode():
            while not self._stop.is_set():
                newcomers = self._admit()
                if self._stop.is_set():
                    break
                try:
                    if newcomers:
                        self._prefill(newcomers)
                    if self._rows:
                        self._decode_step()
                except Exception as exc:  # a failing forward must not leave clients hanging
                    log(f"[red]generation failed:[/] {type(exc).__name__}: {exc}")
                    for row in self._rows + newcomers:
                        if not row.cancelled.is_set():
                            row.on_event(Event(finish_reason="error", error=f"{type(exc).__name__}: {exc}"))
                    self._select([])
        for row in self._rows:
            row.on_event(Event(finish_reason="cancelled", error="the server is shutting down"))

    def _admit(self) -> list[GenerationRequest]:
        """Requests to start now: block while idle, otherwise take what is waiting, up to the free slots."""
        room = self.max_batch_size - len(self._rows)
        if not self._mergeable and self._rows:
            room = 0  # this cache type cannot take rows mid-flight: new requests wait for the batch to end
        taken: list[GenerationRequest] = []
        while len(taken) < room:
            request, self._held = self._held, None
            if request is None:
                try:
                    request = self.waiting.get(block=not self._rows and not taken)
                except queue.Empty:
                    break
                if request is None:
                    break
            if request.cancelled.is_set():
                self._finish_cancelled(request)
                continue
            if not (self._fits(request, taken) and self._same_adapter(request, taken)):
                self._held = request  # first in line: it starts once running rows have finished
                break
            taken.append(request)
        return taken

    def _fits(self, request: GenerationRequest, taken: list[GenerationRequest]) -> bool:
        """Whether `request` can start beside the running rows and `taken`: always, as the cache grows as needed;
        an engine with a fixed cache says no until there is room for it."""
        return True

    def _same_adapter(self, request: GenerationRequest, taken: list[GenerationRequest]) -> bool:
        """Whether `request` may join the batch: always, unless the model serves one adapter at a time."""
        return self.mixed_adapters or all(r.adapter == request.adapter for r in [*self._rows, *taken])

    def _forward(self, input_ids, mask, positions, cache, adapters: list[str]):
        inputs = dict(input_ids=input_ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                      use_cache=True)  # fmt: skip
        if not self.is_peft:
            return self.model(**inputs)
        if self.mixed_adapters:
            # always name the adapters: without the list, peft would apply its active adapter to base-model rows too
            return self.model(**inputs, adapter_names=adapters)
        if adapters[0] == BASE_ADAPTER:  # one adapter in the whole batch (_same_adapter)
            with self.model.disable_adapter():
                return self.model(**inputs)
        self.model.set_adapter(adapters[0])
        return self.model(**inputs)

    def _prefill(self, requests: list[GenerationRequest]) -> None:
        import torch

        for request in requests:
            request.generator = torch.Generator().manual_seed(
                request.params.seed if request.params.seed is not None else torch.seed()
            )
        logits = self._prefill_logits(requests)
        self.stats["prefills"] += 1
        self.stats["prompt_tokens"] += sum(len(r.prompt_ids) for r in requests)
        if self.log_batches:
            log(f"[dim]batch: {len(requests)} new request(s) prefilled, {len(self._rows)} running[/]")
        self._after_sampling(requests, self._sample(logits, requests), first=len(self._rows) - len(requests))

    def _decode_step(self) -> None:
        logits = self._decode_logits()
        self._positions = self._positions + 1
        batch = len(self._rows)
        self.stats["decode_steps"] += 1
        self.stats["batch_sizes"][batch] += 1
        self.stats["max_batch_size"] = max(self.stats["max_batch_size"], batch)
        self._after_sampling(self._rows, self._sample(logits, self._rows), first=0)

    def _prefill_logits(self, requests: list[GenerationRequest]):
        """One left-padded forward over the new prompts (recording prompt log-probabilities where asked), merged
        into the running batch; returns each prompt's last logits."""
        import torch
        from transformers import DynamicCache

        length = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), length), dtype=torch.long)
        for i, request in enumerate(requests):
            ids[i, length - len(request.prompt_ids) :] = torch.tensor(request.prompt_ids)
            mask[i, length - len(request.prompt_ids) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(
            ids, mask, positions, cache, [r.adapter or BASE_ADAPTER for r in requests]
        ).logits
        for i, request in enumerate(requests):
            if request.params.prompt_logprobs is not None:
                start = length - len(request.prompt_ids)
                scores = logits[i, start : length - 1].float().log_softmax(-1)
                request.prompt_logprobs = [None] + [
                    _logprob(row, token, request.params.prompt_logprobs)
                    for row, token in zip(scores, request.prompt_ids[1:], strict=True)
                ]
        self._merge(requests, cache, mask, mask.sum(-1))
        return logits[:, -1, :]

    def _decode_logits(self):
        """One forward of every running row's last token; returns the next token's logits per row."""
        import torch

        mask = torch.cat([self._mask, torch.ones((len(self._rows), 1), dtype=torch.long)], dim=1)
        logits = self._forward(self._next[:, None], mask, self._positions[:, None], self._cache,
                               [r.adapter or BASE_ADAPTER for r in self._rows]).logits  # fmt: skip
        self._mask = mask
        return logits[:, -1, :]

    def _sample(self, logits, requests: list[GenerationRequest]) -> list[int]:

        logits = logits.float()
        tokens = []
        for raw, request in zip(logits, requests, strict=True):
            params, row = request.params, raw
            if params.ignore_eos or len(request.output_ids) < params.min_tokens:
                row = row.clone()
                row[list(self.eos_token_ids)] = float("-inf")
            row = penalized(row, request)
            if params.constraint is not None:
                row = params.constraint.mask(row)
            token = self._choose(row, params, request.generator)
            if params.logprobs is not None:  # the model's own distribution, before temperature or masks
                request.pending_logprobs.append(_logprob(raw.log_softmax(-1), token, params.logprobs))
            tokens.append(token)
        return tokens

    @staticmethod
    def _choose(row, params: SamplingParams, generator) -> int:
        import torch

        if params.temperature == 0:
            return int(row.argmax())
        return int(torch.multinomial(sampling_weights(row, params), 1, generator=generator))

    def _after_sampling(self, requests: list[GenerationRequest], tokens: list[int], first: int) -> None:
        """Append each row's token, deliver new text, and drop the rows that finished."""
        finished = set()
        for offset, (request, token) in enumerate(zip(requests, tokens, strict=True)):
            index = first + offset
            reason = self._advance(request, token, int(self._positions[index]) + 1)
            if reason is not None:
                finished.add(index)
                self._finish(request, reason)
            self._next[index] = token
        for index, request in enumerate(self._rows):
            if index not in finished and request.cancelled.is_set():
                finished.add(index)
                self._finish_cancelled(request)
        if finished:
            self._select([i for i in range(len(self._rows)) if i not in finished])

    def _advance(self, request: GenerationRequest, token: int, length: int) -> str | None:
        """Add one token to a request; returns its finish reason once it is done."""
        request.output_ids.append(token)
        params = request.params
        if token in self.eos_token_ids and not params.ignore_eos:
            return self._deliver(request, "stop", flush=True)
        request.text += self._decode(request, token)
        text = request.text
        for stop in params.stop:
            at = text.find(stop, max(0, request.sent - len(stop)))
            if at != -1:
                request.text = text[:at]
                return self._deliver(request, "stop")
        if params.constraint is not None and params.constraint.advance(token):
            return self._deliver(request, "stop", flush=True)  # the grammar is complete: nothing may follow
        if len(request.output_ids) >= params.max_tokens or length >= self.max_model_len:
            return self._deliver(request, "length", flush=True)
        self._deliver(request, None)
        return None

    def _decode(self, request: GenerationRequest, token: int) -> str:
        """The text `token` adds: incremental with the Rust tokenizer (re-decoding the whole answer at every
        token grows with the square of its length), which holds a half UTF-8 character back by itself."""
        skip = request.params.skip_special_tokens
        if self._backend is not None:
            if request.decoder is None:
                from tokenizers.decoders import DecodeStream

                request.decoder = DecodeStream(skip_special_tokens=skip)
            piece = request.decoder.step(self._backend, token)
            request.held = piece is None  # bytes of an unfinished character wait in the decoder
            return piece or ""
        text = self.tokenizer.decode(request.output_ids, skip_special_tokens=skip)
        done = len(request.text)
        return "" if text.endswith("\ufffd") else text[done:]

    def _deliver(self, request: GenerationRequest, reason: str | None, flush: bool = False) -> str | None:
        """Send the text not yet sent (with the log-probabilities of its tokens); while running, hold back what
        may be the start of a stop string. `flush`: the answer ends here, so bytes the incremental decoder still
        holds (an unfinished UTF-8 character) come out as the whole decode shows them."""
        if flush and request.held:
            ids = [t for t in request.output_ids if t not in self.eos_token_ids or request.params.ignore_eos]
            whole = self.tokenizer.decode(ids, skip_special_tokens=request.params.skip_special_tokens)
            if whole.startswith(request.text):  # only ever adds a tail
                request.text = whole
        text = request.text
        end = len(text)
        if reason is None:
            hold = 0
            for stop in request.params.stop:
                for k in range(min(len(stop) - 1, len(text)), hold, -1):
                    if text.endswith(stop[:k]):
                        hold = k
                        break
            end -= hold
        if end > request.sent:
            request.on_event(Event(text=text[request.sent : end], logprobs=request.pending_logprobs,
                                   prompt_logprobs=request.prompt_logprobs))  # fmt: skip
            request.pending_logprobs, request.prompt_logprobs = [], None
            request.sent = end
        return reason

    def _finish(self, request: GenerationRequest, reason: str) -> None:
        self.stats["finished"] += 1
        self.stats["completion_tokens"] += len(request.output_ids)
        request.on_event(Event(finish_reason=reason, prompt_tokens=len(request.prompt_ids),
                               completion_tokens=len(request.output_ids), cached_tokens=request.cached_tokens,
                               logprobs=request.pending_logprobs, prompt_logprobs=request.prompt_logprobs))  # fmt: skip
        request.pending_logprobs, request.prompt_logprobs = [], None

    def _finish_cancelled(self, request: GenerationRequest) -> None:
        self.stats["cancelled"] += 1
        self.stats["completion_tokens"] += len(request.output_ids)
        self.stats.setdefault("cancelled_at_tokens", []).append(len(request.output_ids))
        request.on_event(Event(finish_reason="cancelled", prompt_tokens=len(request.prompt_ids),
                               completion_tokens=len(request.output_ids)))  # fmt: skip

    # -- batch bookkeeping ----------------------------------------------------------------------------------
    def _merge(self, requests, cache, mask, positions) -> None:
        """Append prefilled rows to the running batch: left-pad the shorter cache, concatenate along the batch."""
        import torch

        next_tokens = torch.zeros(len(requests), dtype=torch.long)
        if not self._rows:
            self._rows, self._cache, self._mask = list(requests), cache, mask
            self._positions, self._next = positions.clone(), next_tokens
            self._mergeable = all(_is_plain_layer(layer) for layer in cache.layers)
            return
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):
                a, b = getattr(old, name), getattr(new, name)
                setattr(old, name, torch.cat([_left_pad(a, width, -2), _left_pad(b, width, -2)], dim=0))
        self._mask = torch.cat([_left_pad(self._mask, width, -1), _left_pad(mask, width, -1)], dim=0)
        self._positions = torch.cat([self._positions, positions])
        self._next = torch.cat([self._next, next_tokens])
        self._rows.extend(requests)

    def _select(self, keep: list[int]) -> None:
        """Keep only these rows, and drop cache columns that are padding for every remaining row."""
        import torch

        if not keep:
            self._rows, self._cache = [], None
            self._mask = torch.zeros((0, 0), dtype=torch.long)
            self._positions = self._next = torch.zeros(0, dtype=torch.long)
            return
        index = torch.tensor(keep)
        self._rows = [self._rows[i] for i in keep]
        self._mask, self._positions, self._next = self._mask[index], self._positions[index], self._next[index]
        self._cache.batch_select_indices(index)
        used = self._mask.any(0).nonzero()
        start = int(used[0]) if len(used) else 0
        if start and self._mergeable:
            self._mask = self._mask[:, start:]
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., start:, :], layer.values[..., start:, :]


def penalized(row, request: GenerationRequest):
    """The row's logits after the request's repetition (prompt and answer tokens), presence and frequency
    (answer tokens) penalties, as vLLM applies them; the row itself when there are none."""
    import torch

    params = request.params
    if params.repetition_penalty == 1.0 and not params.presence_penalty and not params.frequency_penalty:
        return row
    row = row.clone()
    if params.repetition_penalty != 1.0:
        seen = torch.tensor(request.prompt_ids + request.output_ids, dtype=torch.long).unique()
        logits = row[seen]
        row[seen] = torch.where(
            logits > 0, logits / params.repetition_penalty, logits * params.repetition_penalty
        )
    if request.output_ids and (params.presence_penalty or params.frequency_penalty):
        counts = torch.bincount(torch.tensor(request.output_ids, dtype=torch.long), minlength=row.numel())
        row -= params.frequency_penalty * counts + params.presence_penalty * (counts > 0)
    return row


def sampling_weights(row, params: SamplingParams):
    """What a token is sampled from (weights in proportion to its probability): softmax(logits / temperature),
    then (vLLM's order) tokens below min_p times the most likely one's probability, outside the top_k and beyond
    the top_p mass of what is left dropped."""
    import torch

    probs = torch.softmax(row / params.temperature, dim=-1)
    left = 1.0  # the mass left after the filters: top_p counts in it
    if params.min_p > 0:
        probs = torch.where(probs < params.min_p * probs.max(), 0.0, probs)
    if 0 < params.top_k < probs.numel():  # ties with the k-th are kept, as in vLLM and transformers
        probs = torch.where(probs < probs.topk(params.top_k).values[-1], 0.0, probs)
    if params.min_p > 0 or 0 < params.top_k < probs.numel():
        left = float(probs.sum())
    if params.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= params.top_p * left
        sorted_probs[drop] = 0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return probs


def _logprob(scores, token: int, k: int) -> TokenLogprob:
    """`token`'s entry in one row of log-probabilities, with the k most likely entries."""
    top = []
    if k > 0:
        values, ids = scores.topk(min(k, scores.shape[-1]))
        top = list(zip(ids.tolist(), values.tolist(), strict=True))
    return token, float(scores[token]), top


def _is_plain_layer(layer) -> bool:
    from transformers.cache_utils import DynamicLayer

    return type(layer) is DynamicLayer


def _left_pad(tensor, width: int, dim: int):
    import torch.nn.functional as F

    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    pad = [0, 0] * (-dim - 1) + [missing, 0]  # F.pad counts dimensions from the last one
    return F.pad(tensor, pad)
