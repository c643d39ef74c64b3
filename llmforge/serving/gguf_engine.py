"""The embedded server's engine over a GGUF file that llama.cpp runs (`serve` of a gguf artifact).

Everything a request sees is the transformers engine's (serving/engine.py): continuous batching, a seed per request,
stop strings, grammars, log-probabilities, cancellation. Only the forward passes differ. Each running request is
one of llama.cpp's sequences in one KV cache they share (unified: a long answer may use what short ones leave); the
newcomers' prompts go through `llama_decode` in chunks of up to 512 tokens, each decode step is one `llama_decode`
over every running sequence, and the logits come back to the same sampling code.

A finished request's sequence stays in the cache, idle, until its cells or its sequence id are needed (the least
recently used goes first). A newcomer whose prompt starts with the tokens an idle sequence holds takes that
sequence over and computes only the rest of its prompt: the next turn of a conversation, or another request with
the same system prompt, skips what was computed before (llama-server's prompt cache). Requests that want the
prompt's log-probabilities (echo) compute the whole prompt.

llama.cpp's own sampling and its server's slots are not used: the API's guarantees (seeded answers, JSON-schema and
tool-call grammars, stop strings held back while streaming) live in the shared engine, and the GGUF is only a faster
way to the logits on a CPU (bench/bench_serve_gguf.py measures it).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from llmforge.errors import InputError
from llmforge.serving.engine import Engine, GenerationRequest, _logprob

PREFILL_CHUNK = 512  # tokens per llama_decode call while prefilling (llama.cpp's n_batch)
MAX_SEQUENCES = 256  # llama.cpp's LLAMA_MAX_SEQ: sequences one context holds


class GgufEngine(Engine):
    """Continuous batching over llama.cpp's context for one GGUF file."""

    def __init__(self, file: Path, tokenizer, eos_token_ids: list[int] | None, max_model_len: int | None = None,
                 max_batch_size: int = 16, threads: int = 0, log_batches: bool = False,
                 cache_gib: float | None = None, prefix_caching: bool = True):  # fmt: skip
        """`eos_token_ids`: none: llama.cpp's end-of-generation tokens. `max_model_len`: the context length (prompt
        + answer), at most the model's own (none: the model's).
        `cache_gib`: the KV cache's size; none: one context length of tokens, shared (llama-server's default).
        `prefix_caching`: keep finished sequences for prompts that start with their tokens."""
        import llama_cpp
        import psutil
        import torch
        from llama_cpp._internals import LlamaBatch, LlamaContext, LlamaModel

        # llama.cpp logs every load and context detail through this logger; errors are what a server log needs
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        try:
            self.llama = LlamaModel(
                path_model=str(file), params=llama_cpp.llama_model_default_params(), verbose=False
            )
        except ValueError:  # its message is only "Failed to load model from file"
            raise InputError(f"{file}: llama.cpp cannot load this GGUF file (an architecture it lacks, or a "
                             "damaged file)") from None  # fmt: skip
        trained = self.llama.n_ctx_train()
        max_model_len = min(max_model_len or trained, trained)
        self.threads = threads or torch.get_num_threads()
        params = llama_cpp.llama_context_default_params()
        # llama.cpp allocates the whole cache up front; a request starts only once its prompt and max_tokens fit
        per_token = kv_bytes_per_token(self.llama)
        wanted = int(cache_gib * 2**30 / per_token) if cache_gib else max_model_len
        self.cache_tokens = min(max(wanted, max_model_len), max_model_len * max_batch_size)
        self.cache_bytes = self.cache_tokens * per_token
        params.n_ctx = self.cache_tokens
        params.n_batch = params.n_ubatch = max(PREFILL_CHUNK, max_batch_size)
        params.n_seq_max = max_batch_size
        params.kv_unified = True
        params.swa_full = True  # sliding-window layers keep every cell: a reused prefix needs those before it
        params.n_threads = params.n_threads_batch = self.threads
        # llama.cpp would fail with "Failed to create llama_context" (or the kernel kill the process) instead
        cache = f"a KV cache of {self.cache_tokens:,} tokens ({self.cache_bytes / 2**30:,.1f} GiB)"
        free = psutil.virtual_memory().available
        hint = "a shorter context (--seq-len), a smaller cache (--kv-cache-gib) or a smaller --max-batch-size"
        if self.cache_bytes > free:
            raise InputError(f"{file}: {cache} does not fit the {free / 2**30:,.1f} GiB of memory available; "
                             f"ask for {hint}")  # fmt: skip
        try:
            self.context = LlamaContext(model=self.llama, params=params, verbose=False)
        except ValueError:
            raise InputError(f"{file}: llama.cpp could not make {cache}; ask for {hint}") from None
        self._batch = LlamaBatch(n_tokens=params.n_batch, embd=0, n_seq_max=1, verbose=False)
        if eos_token_ids is None:  # the tokens llama.cpp ends a generation at (<|im_end|>, <|eot_id|>, ...)
            vocab = self.llama.vocab
            eos_token_ids = [t for t in range(self.llama.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        super().__init__(None, tokenizer, eos_token_ids, max_model_len, max_batch_size, log_batches,
                         vocab_size=self.llama.n_vocab())  # fmt: skip
        self._free_slots = list(range(max_batch_size - 1, -1, -1))
        self._slots: list[int] = []  # each running row's llama.cpp sequence id
        # sequences kept after their request finished: id -> the tokens their cells hold, least recently used first
        self._idle: OrderedDict[int, list[int]] = OrderedDict()
        self.prefix_caching = prefix_caching
        self.stats["reused_prompt_tokens"] = 0

    def stop(self) -> None:
        super().stop()
        if not self._thread.is_alive():  # a decode still running after the join's timeout keeps its context
            self.context.close()
            self.llama.close()

    def _fits(self, request: GenerationRequest, taken: list[GenerationRequest]) -> bool:
        """Room in the cache for the request's prompt and answer, beside what the others may still write; idle
        sequences are dropped, least recently used first, to make it."""
        needed = sum(self._worst_case(r) for r in self._rows) + self._newcomers_worst_case([*taken, request])
        while self._idle and needed + sum(map(len, self._idle.values())) > self.cache_tokens:
            self._forget(next(iter(self._idle)))
        return needed <= self.cache_tokens

    def _newcomers_worst_case(self, requests: list[GenerationRequest]) -> int:
        """_worst_case of requests admitted together, a prompt that several of them share counted once (they will
        share its cells: see _prefill_logits)."""
        followers = [
            r for r, leader in zip(requests, self._leaders(requests), strict=True) if leader is not None
        ]
        return sum(map(self._worst_case, requests)) - sum(len(r.prompt_ids) for r in followers)

    def _leaders(self, requests: list[GenerationRequest]) -> list[int | None]:
        """For each request admitted together, the index of an earlier one with the same prompt, whose cells it
        will share (None: it computes its own). Not with prefix caching off, nor for a request that wants the
        prompt's log-probabilities: those are computed whole."""
        first: dict[tuple[int, ...], int] = {}
        leaders: list[int | None] = []
        for i, request in enumerate(requests):
            shares = self.prefix_caching and request.params.prompt_logprobs is None
            leader = first.setdefault(tuple(request.prompt_ids), i) if shares else i
            leaders.append(None if leader == i else leader)
        return leaders

    def _worst_case(self, request: GenerationRequest) -> int:
        """Cells a request may fill: its prompt and answer, which stops at the context length (so a request alone
        always fits: the cache holds at least one context)."""
        return min(len(request.prompt_ids) + request.params.max_tokens, self.max_model_len)

    # -- forward passes -------------------------------------------------------------------------------------
    def _prefill_logits(self, requests: list[GenerationRequest]):
        """Run the prompts, each as a new sequence; record prompt log-probabilities where asked; add the rows to the
        running batch; return each prompt's last logits."""
        import torch

        # a prompt that comes several times at once (n choices) is computed once: the others share its cells
        follows = self._leaders(requests)
        taken = [self._take_slot(request, reuse=follows[i] is None) for i, request in enumerate(requests)]
        slots, reused = zip(*taken, strict=True)
        last: list = [None] * len(requests)
        for request in requests:
            if request.params.prompt_logprobs is not None:
                request.prompt_logprobs = [None]
        # (request, position) for every prompt token not in the cache yet, in order: a chunk may end inside a prompt
        work = [(i, pos) for i, r in enumerate(requests) if follows[i] is None
                for pos in range(reused[i], len(r.prompt_ids))]  # fmt: skip
        try:
            for start in range(0, len(work), PREFILL_CHUNK):
                chunk = work[start : start + PREFILL_CHUNK]
                wanted = []
                self._start_batch()
                for k, (i, pos) in enumerate(chunk):
                    request = requests[i]
                    final = pos == len(request.prompt_ids) - 1
                    output = final or request.params.prompt_logprobs is not None
                    self._add(request.prompt_ids[pos], pos, slots[i], output)
                    if output:
                        wanted.append((k, i, pos, final))
                self.context.decode(self._batch)
                for k, i, pos, final in wanted:
                    row = self._logits(self.context.get_logits_ith(k))[0]
                    if final:
                        last[i] = row
                    else:
                        request = requests[i]
                        scores = row.float().log_softmax(-1)
                        request.prompt_logprobs.append(
                            _logprob(scores, request.prompt_ids[pos + 1], request.params.prompt_logprobs)
                        )
            for i, leader in enumerate(follows):
                if leader is not None:  # the leader's cells, shared (one KV cache for all sequences)
                    self.context.kv_cache_seq_cp(slots[leader], slots[i], 0, -1)
                    last[i], requests[i].cached_tokens = last[leader], len(requests[i].prompt_ids)
                    self.stats["reused_prompt_tokens"] += len(requests[i].prompt_ids)
        except BaseException:
            for slot in slots:
                self._release(slot)
            raise
        self._rows.extend(requests)
        self._slots.extend(slots)
        self._positions = torch.cat([self._positions, torch.tensor([len(r.prompt_ids) for r in requests])])
        self._next = torch.cat([self._next, torch.zeros(len(requests), dtype=torch.long)])
        return torch.stack(last)

    def _decode_logits(self):
        self._start_batch()
        for index, slot in enumerate(self._slots):
            self._add(int(self._next[index]), int(self._positions[index]), slot, True)
        self.context.decode(self._batch)
        # every token asked for its logits: they lie one row each, in batch order
        return self._logits(self.context.get_logits(), rows=len(self._slots))

    def _start_batch(self) -> None:
        self._batch.batch.n_tokens = 0

    def _add(self, token: int, position: int, slot: int, output: bool) -> None:
        batch = self._batch.batch
        k = batch.n_tokens
        batch.token[k], batch.pos[k], batch.n_seq_id[k], batch.logits[k] = token, position, 1, output
        batch.seq_id[k][0] = slot
        batch.n_tokens = k + 1

    def _logits(self, pointer, rows: int = 1):
        """`rows` rows of logits from llama.cpp's buffer, copied (the next decode overwrites it)."""
        import numpy as np
        import torch

        return torch.from_numpy(np.ctypeslib.as_array(pointer, shape=(rows, self.vocab_size)).copy())

    # -- batch bookkeeping ----------------------------------------------------------------------------------
    def _take_slot(self, request: GenerationRequest, reuse: bool = True) -> tuple[int, int]:
        """A sequence id for a newcomer and how many of its prompt tokens it already holds. The sequence sharing the
        longest start with the prompt (all but its last token, whose logits are needed) gives them: an idle one is
        taken over, a running one's cells of that start are shared with a new id (it keeps writing after them).
        Otherwise a free id, else the least recently used idle one's. `reuse` False: an empty sequence."""
        prompt, best, reused, running = request.prompt_ids, None, 0, False
        if reuse and self.prefix_caching and request.params.prompt_logprobs is None:
            for slot, held in self._idle.items():
                shared = shared_start(held, prompt[:-1])
                if shared > reused:
                    best, reused = slot, shared
            # a running sequence's cells before its position are written, and stay as they are
            for slot, row, position in zip(self._slots, self._rows, self._positions.tolist(), strict=True):
                shared = shared_start((row.prompt_ids + row.output_ids)[:position], prompt[:-1])
                if shared > reused:
                    best, reused, running = slot, shared, True
        if best is not None and not running:  # an idle sequence, taken over
            del self._idle[best]
            self.context.kv_cache_seq_rm(best, reused, -1)  # what followed the shared start
            slot = best
        else:
            if not self._free_slots:
                self._forget(next(iter(self._idle)))
            slot = self._free_slots.pop()
            if running:  # its cells of the shared start, shared with the new id (not copied)
                self.context.kv_cache_seq_cp(best, slot, 0, reused)
        if reused:
            self.stats["reused_prompt_tokens"] += reused
            request.cached_tokens = reused
        return slot, reused

    def _forget(self, slot: int) -> None:
        """Drop an idle sequence: its cells and its id become free."""
        del self._idle[slot]
        self._release(slot)

    def _release(self, slot: int) -> None:
        self.context.kv_cache_seq_rm(slot, -1, -1)
        self._free_slots.append(slot)

    def _select(self, keep: list[int]) -> None:
        import torch

        for index, slot in enumerate(self._slots):
            if index in keep:
                continue
            if self.prefix_caching:  # kept idle: its cells hold the prompt and the answer's tokens fed so far
                request = self._rows[index]
                self._idle[slot] = (request.prompt_ids + request.output_ids)[: int(self._positions[index])]
            else:
                self._release(slot)
        index = torch.tensor(keep, dtype=torch.long)
        self._rows = [self._rows[i] for i in keep]
        self._slots = [self._slots[i] for i in keep]
        self._positions, self._next = self._positions[index], self._next[index]


def build(
    source,
    max_model_len: int | None,
    max_batch_size: int,
    threads: int,
    log_batches: bool,
    cache_gib: float | None = None,
    prefix_caching: bool = True,
):
    """A gguf artifact's engine (not started) with its original tokenizer and sampling defaults; a .gguf file's
    with the tokenizer rebuilt from its vocabulary."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig

    from llmforge.console import log
    from llmforge.model import gguf
    from llmforge.serving.embedded import Loaded, generation_defaults

    gguf.check_runtime()
    check_batch_size(max_batch_size)
    file = gguf.model_file(source)
    if source.artifact is not None:
        directory = Path(source.path)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        has_settings = (directory / "generation_config.json").is_file()
        generation = GenerationConfig.from_pretrained(directory) if has_settings else GenerationConfig()
        defaults, eos_ids = generation_defaults(generation, tokenizer.eos_token_id)
    else:  # a GGUF made elsewhere: no sampling defaults, and it stops where llama.cpp's own server would
        from llmforge.model.importing import cached_gguf_tokenizer

        tokenizer, _ = cached_gguf_tokenizer(file, source.fingerprint)
        defaults, eos_ids = generation_defaults(GenerationConfig())[0], None
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(1)  # torch only samples here: its idle threads would spin beside llama.cpp's
    engine = GgufEngine(file, tokenizer, eos_ids, max_model_len, max_batch_size, threads, log_batches,
                        cache_gib, prefix_caching)  # fmt: skip
    if source.artifact is not None:
        kind = source.artifact.extra.get("method", "gguf").removeprefix("gguf-").upper()
    else:
        kind = file_type(engine.llama)
    log(f"llama.cpp: {kind}, a KV cache of {engine.cache_tokens:,} tokens ({engine.cache_bytes / 2**20:,.0f} MiB, "
        f"--kv-cache-gib), {engine.threads} threads")  # fmt: skip
    return Loaded(engine, tokenizer, defaults, f"llama.cpp, {kind}")


def shared_start(a: list[int], b: list[int]) -> int:
    """How many tokens two sequences share from their start."""
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def file_type(llama) -> str:
    """The GGUF's type as llama.cpp names it in its file_type field ("Q4_K_M", "F16"; mixed-type files name the
    type of most tensors)."""
    import llama_cpp

    code = int(llama.metadata().get("general.file_type", -1))
    names = {getattr(llama_cpp, name): name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
             for name in dir(llama_cpp) if name.startswith("LLAMA_FTYPE_")}  # fmt: skip
    return names.get(code, "GGUF")


def check_batch_size(max_batch_size: int) -> None:
    if max_batch_size > MAX_SEQUENCES:
        raise InputError(f"--max-batch-size {max_batch_size}: llama.cpp runs at most {MAX_SEQUENCES} sequences at "
                         "once")  # fmt: skip


def kv_bytes_per_token(llama) -> int:
    """Bytes the KV cache holds per token: keys and values of every layer's KV heads, in f16 (llama.cpp's default).
    Layers with a sliding window (Gemma) count whole: the context keeps llama.cpp's full-size window cache
    (`swa_full`), which a reused prefix needs (a pruned window would have lost the cells before it)."""
    import llama_cpp

    model = llama.model
    meta = llama.metadata()
    arch = meta.get("general.architecture", "")
    heads, heads_kv = llama_cpp.llama_model_n_head(model), llama_cpp.llama_model_n_head_kv(model)
    head_dim = llama_cpp.llama_model_n_embd(model) // max(heads, 1)
    key = int(meta.get(f"{arch}.attention.key_length", head_dim))
    value = int(meta.get(f"{arch}.attention.value_length", head_dim))
    return max(llama_cpp.llama_model_n_layer(model) * heads_kv * (key + value) * 2, 1)
