"""The embedded server's engine: continuous batching gives exactly what one-at-a-time generation gives."""

import queue
import time

import pytest

from llmforge.serving.engine import Engine, GenerationRequest, SamplingParams

PROMPTS = [
    "the model learns",
    "a corpus of web pages holds navigation menus and",
    "what is",
    "training runs on many machines with optimizer state",
]


@pytest.fixture(scope="module")
def peaky(tiny_tokenizer_dir):
    """A random tiny Llama with large weights: its greedy choices depend on the context, unlike a near-uniform
    one, so a wrong position or a misaligned cache row changes the output."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmforge.data.tokenizer import load_tokenizer
    from llmforge.model.llama import build_config, special_ids_of

    tokenizer = load_tokenizer(tiny_tokenizer_dir)
    config = build_config("tiny", len(tokenizer), special_ids_of(tokenizer), max_position_embeddings=128)
    config.initializer_range = 0.3
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval(), tokenizer


def generate_alone(model, tokenizer, prompt, max_new_tokens):
    import torch

    ids = tokenizer(prompt)["input_ids"]
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return out[0, len(ids) :].tolist()


def run(engine, tokenizer, prompts, params, stagger=0.0):
    """Submit requests (optionally a little apart, so they join a running batch) and collect their outputs."""
    pending = []
    for prompt, p in zip(prompts, params, strict=True):
        events = queue.Queue()
        request = GenerationRequest(tokenizer(prompt)["input_ids"], p, on_event=events.put)
        engine.submit(request)
        pending.append((request, events))
        time.sleep(stagger)
    return [(request, *collect(events)) for request, events in pending]


def collect(events):
    """The text of a request's deltas and its final event."""
    text = ""
    while (event := events.get(timeout=60)).finish_reason is None:
        text += event.text
    return text + event.text, event


def test_batched_greedy_equals_generate_alone_and_rows_join_mid_flight(peaky):
    model, tokenizer = peaky
    lengths = [4, 12, 12, 12]
    expected = [generate_alone(model, tokenizer, p, n) for p, n in zip(PROMPTS, lengths, strict=True)]
    engine = Engine(model, tokenizer, [tokenizer.eos_token_id], max_model_len=128, max_batch_size=3)
    # queued before the engine starts: three are prefilled together; the fourth waits for the first to finish
    # and joins the two still running, with a cache of another length
    params = [SamplingParams(max_tokens=n, temperature=0, ignore_eos=True) for n in lengths]
    pending = [(request := GenerationRequest(tokenizer(p)["input_ids"], sp, on_event=(events := queue.Queue()).put),
                events) for p, sp in zip(PROMPTS, params, strict=True)]  # fmt: skip
    for request, _ in pending:
        engine.submit(request)
    engine.start()
    try:
        finals = [collect(events) for _, events in pending]
    finally:
        engine.stop()
    assert [r.output_ids for r, _ in pending] == expected
    assert [f.finish_reason for _, f in finals] == ["length"] * 4
    assert [f.completion_tokens for _, f in finals] == lengths
    stats = engine.snapshot()
    assert stats["prefills"] == 2 and stats["max_batch_size"] == 3  # never more than the limit
    assert stats["finished"] == 4 and stats["completion_tokens"] == 40
    # 40 tokens in 2 prefills + 14 decode steps (11 of them three rows wide, 3 for the last row alone)
    assert stats["decode_steps"] == 14 and stats["batch_sizes"] == {"1": 3, "3": 11}


def test_seeded_sampling_does_not_depend_on_batch_companions(peaky):
    model, tokenizer = peaky
    engine = Engine(model, tokenizer, [tokenizer.eos_token_id], max_model_len=128, max_batch_size=8)
    engine.start()
    try:
        sampled = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
        (alone, _, _), = run(engine, tokenizer, [PROMPTS[0]], [sampled])  # fmt: skip
        params = [sampled] + [SamplingParams(max_tokens=10, temperature=1.0, seed=i) for i in range(3)]
        crowd = run(engine, tokenizer, PROMPTS, params)
        other_seed = run(
            engine, tokenizer, [PROMPTS[0]], [SamplingParams(max_tokens=10, temperature=1.0, seed=8)]
        )
    finally:
        engine.stop()
    assert crowd[0][0].output_ids == alone.output_ids
    assert other_seed[0][0].output_ids != alone.output_ids


def test_stop_strings_and_cancellation(peaky):
    model, tokenizer = peaky
    engine = Engine(model, tokenizer, [tokenizer.eos_token_id], max_model_len=128, max_batch_size=4)
    engine.start()
    try:
        free = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)
        (_, full_text, _), = run(engine, tokenizer, [PROMPTS[1]], [free])  # fmt: skip
        stop = next(full_text[i : i + 2] for i in range(4, len(full_text) - 2)
                    if full_text[i : i + 2].isascii() and full_text[i : i + 2].strip())  # fmt: skip
        stopped = SamplingParams(max_tokens=20, temperature=0, ignore_eos=True, stop=["\x00never", stop])
        (_, text, final), = run(engine, tokenizer, [PROMPTS[1]], [stopped])  # fmt: skip
        assert final.finish_reason == "stop" and text == full_text[: full_text.index(stop)]

        # cancel from the consumer's side after the third delta: the engine drops the row at its next step
        events, seen, at = queue.Queue(), [], []

        def consume(event):
            seen.append(event)
            events.put(event)
            if len(seen) == 3:
                at.append(len(long.output_ids))
                long.cancel()

        long = GenerationRequest(tokenizer(PROMPTS[2])["input_ids"],
                                 SamplingParams(max_tokens=100, temperature=0, ignore_eos=True), on_event=consume)  # fmt: skip
        engine.submit(long)
        while (event := events.get(timeout=60)).finish_reason is None:
            pass
        assert event.finish_reason == "cancelled" and event.completion_tokens == at[0] < 100
        assert engine.snapshot()["cancelled"] == 1 and engine.snapshot()["running"] == 0
    finally:
        engine.stop()


def test_min_tokens_holds_back_the_end_of_sequence(peaky):
    model, tokenizer = peaky
    first = generate_alone(model, tokenizer, PROMPTS[0], 1)[0]
    engine = Engine(model, tokenizer, [first], max_model_len=128)  # the greedy first token ends the sequence
    engine.start()
    try:
        plain, held = run(engine, tokenizer, [PROMPTS[0]] * 2, [SamplingParams(max_tokens=10, temperature=0),
                                                                 SamplingParams(max_tokens=10, temperature=0,
                                                                                min_tokens=4)])  # fmt: skip
    finally:
        engine.stop()
    assert plain[2].finish_reason == "stop" and plain[2].completion_tokens == 1 and plain[1] == ""
    assert len(held[0].output_ids) >= 5 and first not in held[0].output_ids[:4]


def test_top_p_and_temperature_shape_the_sampling(peaky):
    model, tokenizer = peaky
    greedy = generate_alone(model, tokenizer, PROMPTS[1], 12)
    engine = Engine(model, tokenizer, [tokenizer.eos_token_id], max_model_len=128, max_batch_size=8)
    engine.start()
    try:

        def sample(seed, **params):
            settings = SamplingParams(max_tokens=12, seed=seed, ignore_eos=True, **params)
            return run(engine, tokenizer, [PROMPTS[1]], [settings])[0][0].output_ids

        free = [sample(seed, temperature=1.0) for seed in range(4)]
        nucleus = [sample(seed, temperature=1.0, top_p=1e-6) for seed in range(4)]  # only the likeliest token
        cold = [sample(seed, temperature=1e-3) for seed in range(4)]
    finally:
        engine.stop()
    assert all(ids != greedy for ids in free) and len({tuple(ids) for ids in free}) == 4
    assert nucleus == [greedy] * 4 and cold == [greedy] * 4


def test_top_k_min_p_and_top_p_weights_are_transformers_warpers(peaky):
    """Each filter alone keeps exactly the tokens transformers' warper keeps, with the same probabilities; together
    they apply in vLLM's order (min_p, top_k, then top_p of what is left)."""
    import torch
    from transformers import MinPLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from llmforge.serving.engine import sampling_weights

    torch.manual_seed(0)
    logits = torch.randn(300) * 3
    for params, warper in [
        (SamplingParams(max_tokens=1, temperature=0.7, top_k=7), TopKLogitsWarper(7)),
        (SamplingParams(max_tokens=1, temperature=0.7, min_p=0.05), MinPLogitsWarper(0.05)),
        (SamplingParams(max_tokens=1, temperature=0.7, top_p=0.8), TopPLogitsWarper(0.8)),
    ]:
        weights = sampling_weights(logits, params)
        expected = torch.softmax(warper(None, (logits / 0.7)[None])[0], -1)
        assert torch.equal(weights > 0, expected > 0), params
        assert torch.allclose(weights / weights.sum(), expected, atol=1e-6)
    both = sampling_weights(logits, SamplingParams(max_tokens=1, top_k=20, top_p=0.5))
    kept = torch.softmax(TopKLogitsWarper(20)(None, logits[None])[0], -1)  # top_p on what top_k leaves
    assert torch.equal(both > 0, torch.softmax(TopPLogitsWarper(0.5)(None, kept.log()[None])[0], -1) > 0)


def test_penalties_change_the_logits_as_vllm_defines_them(peaky):
    """repetition_penalty: transformers' processor, over prompt and answer tokens; presence and frequency
    penalties: OpenAI's, over the answer's tokens only."""
    import torch
    from transformers import RepetitionPenaltyLogitsProcessor

    from llmforge.serving.engine import penalized

    torch.manual_seed(0)
    logits = torch.randn(300) * 3
    request = GenerationRequest(
        [5, 6, 7], SamplingParams(max_tokens=4, repetition_penalty=1.3), on_event=print
    )
    request.output_ids = [7, 9, 9]
    seen = torch.tensor([[5, 6, 7, 7, 9, 9]])
    assert torch.equal(
        penalized(logits, request), RepetitionPenaltyLogitsProcessor(1.3)(seen, logits[None])[0]
    )
    request.params = SamplingParams(max_tokens=4, presence_penalty=0.5, frequency_penalty=0.25)
    expected = logits.clone()
    expected[7] -= 0.5 + 0.25
    expected[9] -= 0.5 + 2 * 0.25
    assert torch.equal(penalized(logits, request), expected)  # prompt tokens 5 and 6 untouched
    assert penalized(logits, GenerationRequest([5], SamplingParams(max_tokens=1), on_event=print)) is logits


def test_sampling_parameters_reach_the_answers(peaky):
    """Through the engine: top_k 1 and min_p 1 sample only the likeliest token (the greedy answer); a repetition
    penalty gives transformers' greedy answer with that penalty, and a frequency penalty keeps the answer from the
    repeat the greedy one makes."""
    import torch

    model, tokenizer = peaky
    greedy = generate_alone(model, tokenizer, PROMPTS[1], 24)
    ids = tokenizer(PROMPTS[1])["input_ids"]
    penalized_greedy = model.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False, eos_token_id=None,
                                      repetition_penalty=1.5, pad_token_id=tokenizer.pad_token_id)[0, len(ids):]  # fmt: skip
    engine = Engine(model, tokenizer, [tokenizer.eos_token_id], max_model_len=128, max_batch_size=8)
    engine.start()
    try:
        prompts = [PROMPTS[1]] * 4
        params = [SamplingParams(max_tokens=24, temperature=1.0, top_k=1, seed=1, ignore_eos=True),
                  SamplingParams(max_tokens=24, temperature=1.0, min_p=1.0, seed=2, ignore_eos=True),
                  SamplingParams(max_tokens=24, temperature=0, repetition_penalty=1.5, ignore_eos=True),
                  SamplingParams(max_tokens=24, temperature=0, frequency_penalty=2.0, ignore_eos=True)]  # fmt: skip
        top_k, min_p, repetition, frequency = (
            r.output_ids for r, _, _ in run(engine, tokenizer, prompts, params)
        )
    finally:
        engine.stop()
    assert top_k == greedy and min_p == greedy
    assert repetition == penalized_greedy.tolist() != greedy
    assert frequency != greedy and max(map(frequency.count, frequency)) < max(map(greedy.count, greedy))


def test_sampling_defaults_are_what_the_generation_config_sets():
    """As vLLM reads generation_config.json: what the file sets (Qwen3 ships top_k 20, min_p 0), not what
    transformers' GenerationConfig fills in (top_k 50); greedy models sample nothing."""
    from transformers import GenerationConfig

    from llmforge.serving.embedded import generation_defaults

    qwen = GenerationConfig(
        do_sample=True, temperature=0.6, top_p=0.95, top_k=20, min_p=0.0, eos_token_id=[1, 2]
    )
    defaults, eos = generation_defaults(qwen)
    assert (defaults.temperature, defaults.top_p, defaults.top_k, defaults.min_p) == (0.6, 0.95, 20, 0.0)
    assert defaults.repetition_penalty == 1.0 and eos == [1, 2]
    smol = generation_defaults(GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9))[0]
    assert (smol.top_k, smol.min_p, smol.repetition_penalty) == (0, 0.0, 1.0)
    greedy = generation_defaults(GenerationConfig(top_k=5, repetition_penalty=1.1))[0]
    assert (greedy.temperature, greedy.top_k, greedy.repetition_penalty) == (0.0, 0, 1.1)


def test_incremental_decoding_gives_the_whole_answer_decoded_at_once(peaky):
    model, tokenizer = peaky
    engine = Engine(model, tokenizer, [tokenizer.eos_token_id], max_model_len=128, max_batch_size=4)
    engine.start()
    try:
        params = [SamplingParams(max_tokens=60, temperature=1.0, seed=s, ignore_eos=True) for s in range(3)]
        answers = run(engine, tokenizer, ["déjà vu: naïve café", *PROMPTS[:2]], params)
    finally:
        engine.stop()
    for request, text, final in answers:
        assert final.completion_tokens == 60
        assert text == tokenizer.decode(request.output_ids, skip_special_tokens=True)
        assert request.decoder is not None  # the Rust tokenizer's DecodeStream did the decoding


def test_logprobs_of_prompts_and_answers_in_a_padded_batch_are_the_models_own(peaky):
    import torch

    model, tokenizer = peaky
    engine = Engine(model, tokenizer, [tokenizer.eos_token_id], max_model_len=128, max_batch_size=4)
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True, logprobs=2, prompt_logprobs=2)
    pending = [(GenerationRequest(tokenizer(p)["input_ids"], params, on_event=(events := queue.Queue()).put), events)
               for p in PROMPTS[:2]]  # fmt: skip
    for request, _ in pending:  # prefilled together: the shorter prompt is left-padded
        engine.submit(request)
    engine.start()
    try:
        for request, events in pending:
            prompt_logprobs, logprobs = None, []
            while True:
                event = events.get(timeout=60)
                prompt_logprobs = prompt_logprobs or event.prompt_logprobs
                logprobs += event.logprobs
                if event.finish_reason:
                    break
            ids = request.prompt_ids + request.output_ids
            with torch.no_grad():
                scores = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
            assert prompt_logprobs[0] is None and len(prompt_logprobs) == len(request.prompt_ids)
            entries = prompt_logprobs[1:] + logprobs
            assert [token for token, _, _ in entries] == ids[1:]
            for position, (token, value, top) in enumerate(entries):
                assert abs(value - float(scores[position, token])) < 1e-5
                best = scores[position].topk(2)
                assert [t for t, _ in top] == best.indices.tolist()
    finally:
        engine.stop()
