"""pretrain: a ~1M-parameter Llama trained in this process on shards made here; resume, rewind, bad input."""

import json
import math
import re
import shutil

import numpy as np
import pytest
from helpers import documents_artifact, llmforge, sentences, stats_mismatches, tokens_artifact

from llmforge.artifacts import Artifact
from llmforge.data.tokenizer import tokenizer_fingerprint
from llmforge.errors import InputError
from llmforge.files import read_jsonl
from llmforge.stages.pretrain import Config, run
from llmforge.train.data import Batch, PackedWindows, document_positions
from llmforge.train.loop import StoppedEarly, Trainer
from llmforge.train.schedule import Schedule

STEPS = 20
# 8 windows of 32 tokens per step: accumulation 2 in one process, 1 in each of two.
SETTINGS = {
    "model": {"preset": "tiny"},
    "seq_len": 32,
    "batch_tokens": 256,
    "micro_batch_size": 4,
    "train_tokens": 256 * STEPS,
    "optim": {"lr": 3e-3, "warmup_steps": 2},
    "checkpoint": {"every": 5},
    "eval": {"every": 10, "batches": 2},
    "logging": {"every": 1, "csv": True},
    "stability": {"spike_window": 5},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def config(**changes) -> Config:
    data = json.loads(json.dumps(SETTINGS))
    for key, value in changes.items():
        node = data
        *parents, last = key.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return Config.model_validate(data)


def losses(out) -> dict[int, float]:
    """Loss per step, the latest record of a step winning (a replayed step is logged again)."""
    return {r["step"]: r["loss"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r}


def tensorboard(out) -> dict[str, dict[int, float]]:
    """The scalars TensorBoard reads from OUT/logs/tensorboard, per tag and step (a replayed step: the latest)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "logs" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def as_float32(values: dict[int, float]) -> dict[int, float]:
    """TensorBoard stores scalars as float32."""
    return {step: float(np.float32(value)) for step, value in values.items()}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory, tiny_tokenizer_dir):
    return tokens_artifact(tmp_path_factory.mktemp("tokens") / "tokens", tiny_tokenizer_dir, sentences(1500))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, tokens):
    return run(tokens, tmp_path_factory.mktemp("pretrain") / "model", config())


def test_loss_falls_and_the_output_is_a_hugging_face_model(pretrained, tokens):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifact = Artifact.open(pretrained)
    assert artifact.kind == "model" and artifact.stage == "pretrain"
    stats = artifact.stats
    assert stats["steps"] == STEPS and stats["tokens"] == 256 * STEPS and stats["parameters"] == 853_120
    assert stats["loss_first"] > math.log(512) - 0.3  # a random model starts near uniform over 512 tokens
    assert stats["loss_final"] < stats["loss_first"] - 1.0
    assert stats["val_loss_final"] < stats["loss_first"] - 1.0
    assert stats_mismatches(pretrained) == []  # what pretrain writes is what it declares, and what cards read
    assert (stats["attention"], stats["compiled"], stats["kernels"]) == (
        "sdpa",
        False,
        "none",
    )  # CPU defaults
    assert artifact.extra["tokenizer_fingerprint"] == tokenizer_fingerprint(tokens / "tokenizer")
    assert artifact.extra["tokenizer_fingerprint"] == Artifact.open(tokens).extra["tokenizer_fingerprint"]
    assert [i["fingerprint"] for i in artifact.manifest["inputs"]] == [Artifact.open(tokens).fingerprint]
    assert artifact.verify() == []

    records = read_jsonl(pretrained / "metrics.jsonl")
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, STEPS + 1))
    assert set(steps[0]) >= {"loss", "lr", "grad_norm", "tokens_per_s", "flops_per_s", "mfu", "memory_gb"}
    assert steps[0]["mfu"] is None and steps[0]["flops_per_s"] > 0  # CPU: no known peak, achieved FLOP/s only
    assert [r["step"] for r in records if "val_loss" in r] == [10, 20]
    # what the first step cost beyond a steady one (compilation on GPUs), measured over steps 2-4
    [first] = [r for r in records if r.get("event") == "first_step"]
    assert first["step"] == 1 and first["compiled"] is False
    assert first["first_step_extra_seconds"] == pytest.approx(
        max(0.0, first["first_step_seconds"] - first["steady_step_seconds"]), abs=2e-3
    )  # three figures each rounded to 1 ms: their difference can be 1.5 ms off
    assert stats["first_step_extra_seconds"] == first["first_step_extra_seconds"]
    assert steps[1]["lr"] == pytest.approx(3e-3) and steps[-1]["lr"] == pytest.approx(3e-4)  # cosine to 10%

    # DeepSpeed's monitors get the same numbers: CSV, and TensorBoard's event files read back by TensorBoard
    csv = (pretrained / "logs" / "csv" / "train_loss.csv").read_text().splitlines()
    assert len(csv) == STEPS + 1 and float(csv[-1].split(",")[1]) == pytest.approx(steps[-1]["loss"])
    scalars = tensorboard(pretrained)
    assert scalars["train/loss"] == as_float32(losses(pretrained))
    assert scalars["train/lr"] == as_float32({r["step"]: r["lr"] for r in steps})
    assert scalars["train/grad_norm"] == as_float32({r["step"]: r["grad_norm"] for r in steps})
    assert scalars["train/tokens_per_s"] == as_float32({r["step"]: r["tokens_per_s"] for r in steps})
    assert scalars["train/val_loss"] == as_float32(
        {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    )
    assert "train/mfu" not in scalars  # n/a on CPU: no point rather than a made-up zero
    assert all(tag.startswith("train/") for tag in scalars)  # one step axis: the optimizer step, not samples
    # resume state stays, unhashed: the last `keep` checkpoints (DeepSpeed files + our markers)
    kept = sorted(p.name for p in (pretrained / "checkpoints").glob("step-*"))
    assert kept == ["step-00000010", "step-00000015"]
    assert not any(f["path"].startswith("checkpoints/") for f in artifact.manifest["files"])

    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja",
                 "generation_config.json"):  # fmt: skip
        assert (pretrained / name).is_file(), name
    model = AutoModelForCausalLM.from_pretrained(pretrained)
    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    assert model.config.vocab_size == len(tokenizer) and model.config.tie_word_embeddings
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    prompt = tokenizer("the model learns", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 8
    # the saved weights are the trained ones: their loss on training text is the trained loss, not the initial
    text = tokenizer(" ".join(sentences(40, seed=7)), return_tensors="pt")["input_ids"][:, :256]
    with torch.no_grad():
        assert model(text, labels=text).loss.item() < stats["loss_first"] - 1.0


def test_rerun_is_up_to_date(pretrained, tokens, capsys):
    before = (pretrained / "artifact.json").read_text()
    assert run(tokens, pretrained, config()) == pretrained
    assert (pretrained / "artifact.json").read_text() == before
    err = capsys.readouterr().err
    assert "up to date" in err and "pretraining plan" not in err  # nothing to do: no plan either


def test_stopped_run_resumes_on_the_same_loss_curve(tmp_path, tokens, pretrained, capsys):
    out = tmp_path / "model"
    with pytest.raises(StoppedEarly, match="stopped at step 7"):
        run(tokens, out, config(stop_after=7))
    # the time estimate from the measured first steps (step 1 pays for warm-up, steps 2-4 are timed)
    assert re.search(r"measured [\d,]+ tokens/s over steps 2-4: about .+ to go for 16 more steps",
                     capsys.readouterr().err)  # fmt: skip
    staging = tmp_path / "model.partial"
    assert not out.exists()
    assert sorted(p.name for p in (staging / "checkpoints").glob("step-*")) == [
        "step-00000005",
        "step-00000007",
    ]
    capsys.readouterr()
    with pytest.raises(InputError, match="ZeRO-0, this run has 1 with ZeRO-2"):
        run(tokens, out, config(distributed__zero=2))  # ZeRO shards do not load into another layout
    assert "pretraining plan" not in capsys.readouterr().err  # refused before the plan: one line
    run(tokens, out, config())
    resumed = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("event") == "resume"]
    assert [r["step"] for r in resumed] == [7]
    reference, continued = losses(pretrained), losses(out)
    assert sorted(continued) == list(range(1, STEPS + 1))
    for step in range(1, STEPS + 1):
        assert continued[step] == pytest.approx(reference[step], abs=1e-4), step
    # TensorBoard: the run before the stop and the resumed one (an events file each), one loss curve
    assert tensorboard(out)["train/loss"] == as_float32(continued)


def test_nan_and_spike_rewind_and_skip_the_batch(tmp_path, tokens, pretrained, monkeypatch):
    monkeypatch.setenv("LLMFORGE_INJECT_LOSS", "12:nan,16:100")
    out = run(tokens, tmp_path / "model", config())
    records = read_jsonl(out / "metrics.jsonl")
    rewinds = [r for r in records if r.get("event") == "rewind"]
    assert [(r["step"], r["batch"]) for r in rewinds] == [(13, 12), (16, 16)]
    assert "loss is nan" in rewinds[0]["reason"] and "loss spike" in rewinds[1]["reason"]
    stats = Artifact.open(out).stats
    assert stats["rewinds"] == 2 and stats["skipped_batches"] == [12, 16] and stats["steps"] == STEPS
    assert json.loads((out / "checkpoints" / "skipped.json").read_text()) == {"batches": [12, 16]}
    # the steps replayed from the step-10 checkpoint match the clean run; the batch after the skip differs
    reference, rewound = losses(pretrained), losses(out)
    assert rewound[11] == pytest.approx(reference[11], abs=1e-4)
    assert rewound[12] == pytest.approx(reference[12], abs=1e-4)
    assert rewound[13] != pytest.approx(reference[13], abs=1e-4)
    assert all(math.isfinite(v) for v in rewound.values()) and stats["loss_final"] < stats["loss_first"] - 1.0
    # TensorBoard shows the replayed steps' losses, not those logged before the rewind; one writer for the run
    assert tensorboard(out)["train/loss"] == as_float32(rewound)
    assert len(list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (out / "logs" / "csv" / "train_loss.csv").read_text().count("step,loss") == 1


def test_qwen3_with_qk_norm_rope_theta_wsd_schedule_and_the_last_checkpoint_kept(tmp_path, tokens):
    import torch
    from transformers import AutoModelForCausalLM

    settings = config(model__arch="qwen3", model__rope_theta=500000.0, optim__schedule="wsd",
                      train_tokens=256 * 10, checkpoint__every=3, checkpoint__keep=1, eval__every=0)  # fmt: skip
    out = run(tokens, tmp_path / "qwen3", settings)
    stats = Artifact.open(out).stats
    assert stats["loss_final"] < stats["loss_first"] - 0.5
    # WSD over 10 steps: 2 warmup, flat at the peak, linear decay to 10% over the last 20% (2 steps)
    lrs = [r["lr"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert lrs == pytest.approx([3e-3 * m for m in (0.5, 1, 1, 1, 1, 1, 1, 1, 0.55, 0.1)])
    # checkpoints at steps 3, 6 and 9, only the newest kept (checkpoint.keep = 1)
    assert [p.name for p in (out / "checkpoints").glob("step-*")] == ["step-00000009"]

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.rope_parameters["rope_theta"] == 500000.0
    norms = model.model.layers[0].self_attn
    assert norms.q_norm.weight.shape == norms.k_norm.weight.shape == (32,)  # QK-norm over each head's 32 dims
    assert not torch.equal(norms.q_norm.weight, torch.ones(32))  # and trained
    assert stats["parameters"] == sum(p.numel() for p in model.parameters())  # the plan counted them too


def test_processes_per_node_under_torchrun_or_the_deepspeed_launcher(monkeypatch):
    from llmforge.train.loop import local_processes

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_SIZE", raising=False)
    assert local_processes() == 1
    monkeypatch.setenv("LOCAL_SIZE", "8")  # deepspeed.launcher.launch (--hostfile)
    assert local_processes() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun (--nproc)
    assert local_processes() == 4


def test_checkpointing_compile_and_bf16_autocast_train_the_same_model(tmp_path, tokens, pretrained):
    reference = losses(pretrained)
    with pytest.raises(StoppedEarly):  # aot_eager: the graph capture of torch.compile without code generation
        run(tokens, tmp_path / "compiled", config(compile=True, compile_backend="aot_eager", stop_after=2))
    compiled = losses(tmp_path / "compiled.partial")
    assert [compiled[s] for s in (1, 2)] == pytest.approx([reference[s] for s in (1, 2)], abs=1e-5)
    with pytest.raises(StoppedEarly):
        run(tokens, tmp_path / "ckpt", config(activation_checkpointing=True, stop_after=3))
    recomputed = losses(tmp_path / "ckpt.partial")
    assert [recomputed[s] for s in (1, 2, 3)] == pytest.approx([reference[s] for s in (1, 2, 3)], abs=1e-5)
    with pytest.raises(StoppedEarly):
        run(tokens, tmp_path / "bf16", config(precision="bf16", stop_after=3))
    autocast = losses(tmp_path / "bf16.partial")
    assert [autocast[s] for s in (1, 2, 3)] == pytest.approx([reference[s] for s in (1, 2, 3)], abs=0.05)
    assert autocast[1] != reference[1]  # bf16 matmuls really ran


def test_bad_inputs_are_one_clear_error(tmp_path, tokens, pretrained, tiny_tokenizer_dir, capsys):
    documents = documents_artifact(tmp_path / "docs", ["some text"])
    with pytest.raises(
        InputError, match="pretrain needs a tokens artifact made by `llmforge tokenize encode`"
    ):
        run(documents, tmp_path / "a", config())
    with pytest.raises(
        InputError, match="model.vocab_size 1000 does not match the tokenizer's vocabulary of 512"
    ):
        run(tokens, tmp_path / "b", config(model__vocab_size=1000))
    with pytest.raises(InputError, match=r"batch_tokens 300 is not a multiple of .* = 32 x 4 x 1 = 128"):
        run(tokens, tmp_path / "c", config(batch_tokens=300))
    capsys.readouterr()
    with pytest.raises(
        InputError, match=r"holds a different model artifact \(config.optim.lr: 0.003 -> 0.001"
    ):
        run(tokens, pretrained, config(optim__lr=1e-3))
    assert "pretraining plan" not in capsys.readouterr().err  # the error is the only line
    with pytest.raises(InputError, match="less than one batch"):
        run(tokens, tmp_path / "d", config(batch_tokens=2**20, micro_batch_size=8))
    # a tokenizer swapped under the shards is caught before training
    swapped = tmp_path / "swapped"
    shutil.copytree(tokens, swapped)
    with open(swapped / "tokenizer" / "tokenizer.json", "a") as handle:
        handle.write("\n")
    with pytest.raises(InputError, match="tokenizer fingerprint differs"):
        run(swapped, tmp_path / "e", config())
    assert not any((tmp_path / name).exists() for name in "abcde")


def continued(init, **changes) -> Config:
    """The test settings for continuing `init`: no preset, the architecture comes from the init model."""
    data = config(**changes).model_dump(exclude_unset=True)
    if "model" not in changes:
        del data["model"]
    return Config.model_validate({**data, "init_from": str(init)})


def test_continued_pretraining_starts_from_the_init_model(tmp_path, tokens, pretrained, tiny_tokenizer_dir, capsys,
                                                          monkeypatch):  # fmt: skip
    import torch

    torch_linear = torch.nn.functional.linear
    first = losses(pretrained)
    out = run(tokens, tmp_path / "continued", continued(pretrained, train_tokens=256 * 4, eval__every=0))
    assert "init from" in capsys.readouterr().err  # the plan says where the weights come from
    again = losses(out)
    # step 1's loss is the init model's, before any update: far below a random start, near where the first run ended
    assert again[1] < first[1] - 1.0
    assert again[1] == pytest.approx(first[STEPS], abs=0.3)
    artifact, init = Artifact.open(out), Artifact.open(pretrained)
    assert [i["fingerprint"] for i in artifact.manifest["inputs"]] == [
        Artifact.open(tokens).fingerprint,
        init.fingerprint,
    ]
    assert artifact.extra["init_from"] == {"path": str(pretrained.resolve()), "kind": "model",
                                           "fingerprint": init.fingerprint}  # fmt: skip
    assert artifact.manifest["config"]["init_from"] == str(pretrained)
    assert artifact.stats["parameters"] == init.stats["parameters"]
    assert init.fingerprint in {a.fingerprint for a in artifact.ancestors()}
    tree = llmforge("lineage", out).stderr
    assert str(pretrained) in tree and init.fingerprint[:12] in tree

    # ZeRO-3 starts from the same weights: the whole model sharded after loading, or loaded straight into shards
    # (the path for models too big to hold whole in every process)
    for sharded in (False, True):
        monkeypatch.setattr(Trainer, "build_sharded", lambda self, sharded=sharded: sharded)
        with pytest.raises(StoppedEarly):
            run(tokens, tmp_path / f"z{sharded}", continued(pretrained, distributed__zero=3, stop_after=1))
        assert losses(tmp_path / f"z{sharded}.partial")[1] == pytest.approx(again[1], abs=1e-5)
    # DeepSpeed's process-wide F.linear swap does not outlive the run (quantize and eval run in-process after it)
    assert torch.nn.functional.linear is torch_linear

    # a longer seq_len extends the model's context, and the plan says so
    run(tokens, tmp_path / "c", continued(pretrained, seq_len=64, batch_tokens=512), dry_run=True)
    err = capsys.readouterr().err
    assert "context 32 -> 64" in err and "pass --seq-len" not in err  # asked for: no warning
    # the architecture is the init model's: a preset or dimensions beside it are refused
    with pytest.raises(InputError, match=r"the architecture comes from that model; drop model.hidden_size, "
                                         r"model.preset"):  # fmt: skip
        run(tokens, tmp_path / "a", continued(pretrained, model={"preset": "tiny", "hidden_size": 64}))
    # tokens of another tokenizer are refused, one line, exit 2, before any training
    other_tokenizer = tmp_path / "other-tokenizer"
    shutil.copytree(tiny_tokenizer_dir, other_tokenizer)
    with open(other_tokenizer / "chat_template.jinja", "a") as handle:  # same vocabulary, another template
        handle.write("\n")
    other = tokens_artifact(tmp_path / "other-tokens", other_tokenizer, sentences(200))
    refused = llmforge("pretrain", other, "-o", tmp_path / "b", "--init-from", pretrained, check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert "not encoded with the tokenizer of" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert not any((tmp_path / name).exists() for name in "abc")


def test_continued_pretraining_may_raise_the_rope_base(tmp_path, tokens, pretrained, capsys):
    """model.rope_theta beside --init-from: the long-context recipe's new RoPE base (no weight depends on it), in
    the saved config and the plan; left at the from-scratch default, the learning rate is warned about."""
    data = continued(
        pretrained, model={"rope_theta": 40000.0}, train_tokens=256 * 2, eval__every=0
    ).model_dump(exclude_unset=True)
    del data["optim"]["lr"]
    out = run(tokens, tmp_path / "theta", Config.model_validate(data))
    err = " ".join(capsys.readouterr().err.split())
    assert "its weights; RoPE base 10,000 -> 40,000" in err
    assert f"lr 0.0003 is the from-scratch default; {pretrained} was pretrained at a peak of 0.003" in err
    saved = json.loads((out / "config.json").read_text())
    assert saved["rope_parameters"]["rope_theta"] == 40000.0
    assert json.loads((pretrained / "config.json").read_text())["rope_parameters"]["rope_theta"] == 10000.0
    # the weights now see other rotations: transformers rebuilds them from the saved base, and step 1's loss is no
    # longer the one the init model's rotations give (at 32 tokens the slow rotations barely differ)
    import torch
    from transformers import AutoModelForCausalLM

    rotary = AutoModelForCausalLM.from_pretrained(out).model.rotary_emb
    dims = rotary.inv_freq.numel() * 2
    assert torch.allclose(rotary.inv_freq, 1 / 40000.0 ** (torch.arange(0, dims, 2).float() / dims))
    same = run(tokens, tmp_path / "same", continued(pretrained, train_tokens=256 * 2, eval__every=0))
    assert losses(out)[1] != losses(same)[1]


def test_a_rope_base_per_layer_type_is_not_changed_by_one_setting(tmp_path, tokens, tiny_tokenizer_dir):
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gemma = tmp_path / "gemma"
    config_ = AutoConfig.for_model("gemma3_text", vocab_size=512, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=32)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config_).save_pretrained(gemma)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tiny_tokenizer_dir / name, gemma / name)
    with pytest.raises(
        InputError, match=r"model.rope_theta: .*'sliding_attention'.* have no single base to change"
    ):
        run(tokens, tmp_path / "g", continued(gemma, model={"rope_theta": 40000.0}), dry_run=True)


def test_z_loss_trains_log_z_down_and_leaves_the_logged_cross_entropy_alone(tmp_path, tokens, pretrained,
                                                                             capsys):  # fmt: skip
    """stability.z_loss adds z x mean log(Z)^2 to what is backpropagated: the logged loss stays the cross-entropy
    (step 1, before any update, is the plain run's), log(Z)^2 is logged, and the trained model's is lower."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmforge.train.loop import cross_entropy_and_z, token_cross_entropy

    logits, targets = torch.randn(2, 5, 11) * 4, torch.randint(0, 11, (2, 5))
    loss, z = cross_entropy_and_z(logits, targets)
    assert torch.equal(loss, token_cross_entropy(logits, targets))
    assert torch.allclose(z, (logits.logsumexp(-1) ** 2).mean())

    out = run(tokens, tmp_path / "z", config(stability__z_loss=0.05), dry_run=False)
    assert "cross-entropy + 0.05 x log(Z)^2 (z-loss)" in capsys.readouterr().err  # the plan
    logged = read_jsonl(out / "metrics.jsonl")
    steps = [r for r in logged if "loss" in r and "step" in r]
    assert steps[0]["step"] == 1 and steps[0]["loss"] == losses(pretrained)[1]
    assert all(r["z_squared"] > 0 for r in steps) and not any(
        "z_squared" in r for r in read_jsonl(pretrained / "metrics.jsonl")
    )

    windows = torch.tensor([list(range(3, 35)), list(range(40, 72))])

    def mean_log_z_squared(model_dir):
        with torch.no_grad():
            model_logits = AutoModelForCausalLM.from_pretrained(model_dir)(windows).logits
        return float((model_logits.logsumexp(-1) ** 2).mean())

    assert mean_log_z_squared(out) < 0.8 * mean_log_z_squared(pretrained)  # measured: 24.8 against 38.7


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, tokens, capsys):
    assert run(tokens, tmp_path / "model", config(distributed__zero=3), dry_run=True) is None
    err = " ".join(capsys.readouterr().err.split())  # the table's cells, rewrapped
    for expected in ("pretraining plan", "853k", "tokens per parameter", "Chinchilla", "6ND", "ZeRO-3",
                     "memory per device", "accumulation 2", "sdpa (auto: SDPA on CPU", "torch.compile",
                     "off (auto: off on CPU", "none (auto: Liger's Triton kernels need a CUDA GPU",
                     "MFU: n/a without a known GPU peak"):  # fmt: skip
        assert expected in err, expected
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.partial").exists()


def test_a_gpu_plan_quotes_the_mfu_measured_for_its_own_settings(tmp_path, tokens, capsys, monkeypatch):
    """On an H200 the 350m preset's defaults (FlexAttention, compiled) were measured at 42.0-43.0% MFU: the plan
    quotes that spread first and times the run with the lowest; with Liger asked for, compile's auto turns off."""
    from llmforge import machine

    monkeypatch.setattr(machine, "has_cuda", lambda: True)
    monkeypatch.setattr(machine, "gpu_name", lambda: "NVIDIA H200")
    monkeypatch.setattr(machine, "has_package", lambda name: name == "liger_kernel")
    run(tokens, tmp_path / "model", config(model__preset="350m"), dry_run=True)
    err = " ".join(capsys.readouterr().err.split())
    assert "flex_attention (auto: document masks as FlexAttention block masks" in err
    assert "on (auto: on GPUs" in err and "none (auto: torch.compile instead" in err
    assert (
        "42.0-43.0% (4 runs) measured for 350m on H200 with these settings (torch.compile, FlexAttention block "
        "masks)" in err
    )
    assert "time at 42% MFU" in err and "step 1 compiles: 50-68 s measured" in err
    run(tokens, tmp_path / "model", config(model__preset="350m", kernels="liger"), dry_run=True)
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "off (auto: off with kernels liger (Liger's fused linear cross-entropy fails under torch.compile"
        in err
    )
    assert (
        "28.9% measured for 350m on H200 with these settings (eager, FlexAttention block masks, Liger" in err
    )
    with pytest.raises(InputError, match="kernels liger with compile"):
        run(
            tokens,
            tmp_path / "model",
            config(model__preset="350m", kernels="liger", compile=True),
            dry_run=True,
        )
    # RMSNorm and SwiGLU alone compile (measured): compile's auto stays on, and the plan says they did not pay there
    run(tokens, tmp_path / "model", config(model__preset="350m", kernels="swiglu,rms_norm"), dry_run=True)
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "rms_norm,swiglu (rms_norm,swiglu: Liger's rms_norm, swiglu; under torch.compile Liger's RMSNorm"
        in err
    )
    assert "measured no faster than" in err
    assert "on (auto: on GPUs" in err
    assert (
        "not measured with these settings (torch.compile, FlexAttention block masks, Liger rms_norm + swiglu)"
        in err
    )
    assert not (tmp_path / "model").exists() and not (tmp_path / "model.partial").exists()


def test_attention_compile_and_kernels_settings_on_cpu_and_what_a_gpu_would_get(tmp_path, tokens, capsys,
                                                                                 monkeypatch):  # fmt: skip
    from llmforge import machine
    from llmforge.train import pretrain_plan

    # asked for Liger on CPU: the run falls back to PyTorch's kernels, and says so once
    with pytest.raises(StoppedEarly):
        run(tokens, tmp_path / "liger", config(kernels="liger", stop_after=1))
    err = capsys.readouterr().err
    assert (
        err.count("kernels liger: Liger's Triton kernels need a CUDA GPU; falling back to PyTorch's kernels")
        == 1
    )
    assert json.loads((tmp_path / "liger.partial/checkpoints/plan.json").read_text())["kernels"] == "none"
    # FlexAttention cannot train on CPU (no backward pass there): refused before anything is written
    with pytest.raises(InputError, match="flex_attention: PyTorch's FlexAttention trains on CUDA GPUs only"):
        run(tokens, tmp_path / "flex", config(model__attention="flex_attention"))
    assert not (tmp_path / "flex.partial").exists()

    # the same choices where a GPU is (the machine's answers changed; the decisions are plain functions of them)
    monkeypatch.setattr(machine, "has_cuda", lambda: True)
    monkeypatch.setattr(machine, "has_package", lambda name: name == "liger_kernel")
    assert pretrain_plan.resolve_attention("auto", document_masking=True)[0] == "flex_attention"
    assert pretrain_plan.resolve_attention("auto", document_masking=False)[0] == "sdpa"  # SDPA's causal flash
    assert pretrain_plan.resolve_compile(None, zero=2)[0] is True
    assert pretrain_plan.resolve_compile(None, zero=3) == (False, "auto: off with ZeRO-3 (not measured); "
                                                                  "--compile to try it")  # fmt: skip
    assert pretrain_plan.resolve_compile(False, zero=2) == (False, "as set")
    # Liger's kernels failed under torch.compile on an H200, and compiled without them was faster: auto takes them
    # only for runs set not to compile, an explicit Liger turns compile's auto off, and asking for both is refused
    assert pretrain_plan.resolve_kernels("auto", zero=2, model_type="llama")[0] == "none"
    assert pretrain_plan.resolve_kernels("auto", zero=2, model_type="llama", compile=True)[0] == "none"
    assert pretrain_plan.resolve_kernels("auto", zero=2, model_type="llama", compile=False)[0] == "liger"
    assert pretrain_plan.resolve_kernels("liger", zero=2, model_type="llama")[0] == "liger"
    assert pretrain_plan.resolve_compile(None, zero=2, kernels="liger")[0] is False
    assert "fails under torch.compile" in pretrain_plan.resolve_compile(None, zero=2, kernels="liger")[1]
    assert pretrain_plan.resolve_compile(None, zero=2, kernels="none")[0] is True
    with pytest.raises(
        InputError,
        match="kernels liger with compile: Liger's fused linear cross-entropy fails under torch.compile",
    ):
        pretrain_plan.resolve_kernels("liger", zero=2, model_type="llama", compile=True)
    # each kernel on its own: the fused loss is the one measured to fail compiled; the others may be tried
    with pytest.raises(InputError, match="or leave fused_linear_cross_entropy out"):
        pretrain_plan.resolve_kernels("fused_linear_cross_entropy", zero=2, model_type="llama", compile=True)
    assert pretrain_plan.resolve_kernels("rms_norm,swiglu", zero=2, model_type="llama", compile=True) == (
        "rms_norm,swiglu", "rms_norm,swiglu: Liger's rms_norm, swiglu")  # fmt: skip
    assert pretrain_plan.resolve_compile(None, zero=2, kernels="swiglu")[0] is True
    assert pretrain_plan.resolve_compile(None, zero=2, kernels="fused_linear_cross_entropy")[0] is False
    # ZeRO-3 shards the output weights the fused loss reads: it is left out, the rest kept, and the run says so
    assert pretrain_plan.resolve_kernels("liger", zero=3, model_type="llama", compile=False) == (
        "rms_norm,swiglu", "liger: Liger's rms_norm, swiglu; fused_linear_cross_entropy left out with ZeRO-3 (it "
        "reads the sharded output weights)")  # fmt: skip
    assert "left out with ZeRO-3" in capsys.readouterr().err
    assert (
        pretrain_plan.resolve_kernels("fused_linear_cross_entropy", zero=3, model_type="llama")[0] == "none"
    )
    # ...before the compile check: what is left compiles
    assert (
        pretrain_plan.resolve_kernels("liger", zero=3, model_type="llama", compile=True)[0]
        == "rms_norm,swiglu"
    )
    assert pretrain_plan.resolve_kernels("auto", zero=3, model_type="qwen3", compile=False)[0] == "none"
    # the fused loss computes no z-loss: left out with z_loss too
    assert pretrain_plan.resolve_kernels("auto", zero=2, model_type="llama", compile=False, z_loss=True) == (
        "rms_norm,swiglu", "auto: Liger's rms_norm, swiglu; fused_linear_cross_entropy left out with z_loss (it "
        "computes no z-loss here)")  # fmt: skip
    assert pretrain_plan.resolve_kernels("auto", zero=0, model_type="mistral")[1].startswith(
        "auto: Liger is wired"
    )
    monkeypatch.setattr(machine, "has_package", lambda name: name in ("liger_kernel", "flash_attn"))
    assert pretrain_plan.resolve_attention("auto", document_masking=True)[0] == "flash_attention_2"
    monkeypatch.setattr(machine, "has_package", lambda name: False)
    assert pretrain_plan.resolve_kernels("auto", zero=2, model_type="llama") == (
        "none", "auto: liger-kernel is not installed (pip install liger-kernel); PyTorch's kernels")  # fmt: skip


# -- pieces ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_each_liger_kernel_swaps_only_its_own_modules(arch):
    """`kernels` picks Liger's kernels one by one; on CPU (no Triton driver) the swap itself is checked: which
    modules and which forward the model ends up with, and that nothing leaks to models built afterwards."""
    from llmforge.model.kernels import apply_liger, canonical_kernels
    from llmforge.model.llama import build_config, build_model

    def swapped(kernels: str) -> tuple[bool, bool, bool]:
        model = build_model(build_config("tiny", 512, {}, arch=arch, max_position_embeddings=64), seed=0)
        plain_forward = type(model).forward
        if kernels != "none":
            apply_liger(model, kernels)
        layer = model.model.layers[0]
        norms = {
            m._get_name() for m in (model.model.norm, layer.input_layernorm, layer.post_attention_layernorm)
        }
        assert len(norms) == 1  # all norms or none
        return (norms == {"LigerRMSNorm"}, layer.mlp._get_name() == "LigerSwiGLUMLP",
                model.forward.__func__ is not plain_forward)  # fmt: skip

    assert swapped("rms_norm") == (True, False, False)
    assert swapped("swiglu") == (False, True, False)
    assert swapped("fused_linear_cross_entropy") == (False, False, True)
    assert swapped("liger") == (True, True, True)
    assert swapped("none") == (False, False, False)  # built after the swaps above: transformers' own classes
    assert canonical_kernels(" swiglu , rms_norm") == "rms_norm,swiglu"
    with pytest.raises(ValueError, match="unknown kernel rmsnorm: use auto, none, liger"):
        canonical_kernels("rmsnorm,swiglu")


def test_document_positions_restart_at_every_document():
    ends = np.array([3, 5, 12, 20], dtype=np.uint64)  # documents [0,3) [3,5) [5,12) [12,20)
    assert document_positions(ends, 0, 8).tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert document_positions(ends, 4, 8).tolist() == [0, 0, 1, 2, 3, 4, 5, 6]  # window starts mid-document
    assert document_positions(ends, 12, 8).tolist() == list(range(8))


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_packed_documents_do_not_see_each_other(arch):
    """With restarting positions, a document's logits inside a packed row equal its logits alone (SDPA's
    block-diagonal mask), and flattening the rows (FlashAttention's varlen layout) changes nothing."""
    import torch

    from llmforge.model.llama import build_config, build_model

    model = build_model(build_config("tiny", 512, {}, arch=arch, max_position_embeddings=64), seed=1).eval()
    model.config.use_cache = (
        False  # as in training: transformers reads packing from positions only without a cache
    )
    first, second = torch.randint(0, 512, (1, 5)), torch.randint(0, 512, (1, 11))
    packed = torch.cat([first, second], dim=1)
    positions = torch.tensor([list(range(5)) + list(range(11))])
    with torch.no_grad():
        alone = model(second).logits[0]
        masked = model(packed, position_ids=positions).logits[0, 5:]
        leaky = model(packed).logits[0, 5:]
        rows = Batch(torch.cat([packed, packed.flip(1)]).numpy(), np.zeros((2, 16), dtype=np.int64),
                     torch.cat([positions, positions]).numpy())  # fmt: skip
        flat = rows.flattened()
        by_row = model(
            torch.from_numpy(rows.input_ids), position_ids=torch.from_numpy(rows.position_ids)
        ).logits
        flattened = model(
            torch.from_numpy(flat.input_ids), position_ids=torch.from_numpy(flat.position_ids)
        ).logits
    assert torch.allclose(masked, alone, atol=1e-5)
    assert not torch.allclose(leaky, alone, atol=1e-3)
    assert torch.allclose(flattened.view(2, 16, -1), by_row, atol=1e-5)


# Packed rows for the attention tests: 3 and 4 documents, a window starting mid-document (positions from 7).
PACKED = [[*range(10), *range(30), *range(24)], [*range(7, 23), *range(20), *range(5), *range(23)]]


def test_document_block_mask_is_the_document_mask_without_a_seq_by_seq_tensor():
    """The FlexAttention block mask holds, tile by tile, exactly what FlexAttention's own builder makes from the
    dense mask, allows exactly the pairs transformers' SDPA mask allows, and is built from tensors of (rows x
    blocks x blocks) and (rows x seq) elements only: every op it runs is recorded at seq 1024."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, create_mask
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers.masking_utils import (
        and_masks,
        causal_mask_function,
        find_packed_sequence_indices,
        packed_sequence_mask_function,
        sdpa_mask,
    )

    from llmforge.model.attention import document_block_mask, document_ids

    layouts = [
        PACKED,
        [[*range(300), *range(500), *range(224)], [*range(1024)]],  # fmt: skip
        [[*range(130), *range(126), *range(744)], [*range(5, 1005)]],
    ]  # 1000: a partial last tile
    for rows in layouts:
        positions = torch.tensor(rows)
        seq = positions.shape[1]
        ours = document_block_mask(positions)
        # transformers' reading of the same positions, as the SDPA path uses it, and FlexAttention's own builder
        packed = and_masks(
            causal_mask_function, packed_sequence_mask_function(find_packed_sequence_indices(positions))
        )
        reference = create_block_mask(packed, 2, None, seq, seq, device="cpu")
        for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
            assert torch.equal(getattr(ours, name), getattr(reference, name)), name
        allowed = create_mask(
            ours.mask_mod, 2, 1, seq, seq
        )  # the pairs, expanded here for the comparison only
        dense = sdpa_mask(
            batch_size=2, q_length=seq, kv_length=seq, mask_function=packed, allow_is_causal_skip=False
        )
        assert torch.equal(allowed, dense.expand_as(allowed))
    assert document_ids(torch.tensor(PACKED)).max(dim=1).values.tolist() == [2, 3]

    class Sizes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, tuple | list) else [out]:
                if isinstance(tensor, torch.Tensor):
                    self.largest = max(self.largest, tensor.numel())
            return out

    positions = torch.tensor(layouts[1])
    sizes = Sizes()
    with sizes:
        document_block_mask(positions)
    assert 0 < sizes.largest <= 2 * 1024  # the position ids themselves; 1024 x 1024 would be 1M


@pytest.mark.filterwarnings("ignore:.*flex_attention called without torch.compile")
def test_flex_attention_gives_the_loss_and_gradients_of_sdpa_with_the_dense_mask(monkeypatch):
    """FlexAttention with the document block mask against today's SDPA with transformers' dense mask, on a tiny
    Llama: what reaches attention (a BlockMask, not a seq x seq tensor), the logits of the real CPU kernel
    (compiled: FlexAttention runs through torch.compile, forward only on CPU) and the loss and gradients through
    FlexAttention's reference implementation (torch's eager path; its CPU kernel has no backward pass, its GPU
    kernel is measured by bench/bench_gpu.sh). Tolerances: float32 summation order, 1e-5 absolute."""
    import torch
    import torch.nn.attention.flex_attention as flex
    import transformers.integrations.flex_attention as hf_flex
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.modeling_utils import AttentionInterface

    from llmforge.model.attention import model_inputs
    from llmforge.model.llama import build_config, build_model

    reached = []
    for name in ("sdpa", "flex_attention"):
        original = AttentionInterface._global_mapping[name]

        def recorder(module, query, key, value, attention_mask, *args, _original=original, **kwargs):
            reached.append(attention_mask)
            return _original(module, query, key, value, attention_mask, *args, **kwargs)

        monkeypatch.setitem(AttentionInterface._global_mapping, name, recorder)

    generator = torch.Generator().manual_seed(0)
    input_ids, targets = torch.randint(0, 512, (2, 2, 64), generator=generator)
    positions = torch.tensor(PACKED)
    models, outputs = {}, {}
    for attention in ("sdpa", "flex_attention"):
        config = build_config("tiny", 512, {}, max_position_embeddings=64)
        config._attn_implementation = attention
        models[attention] = model = build_model(config, seed=1).eval()
        model.config.use_cache = False
        reached.clear()
        with torch.no_grad():
            outputs[attention] = model(**model_inputs(input_ids, positions, attention)).logits
        masks = list(reached)
        assert len(masks) == 4  # one call per layer
        if attention == "sdpa":  # today's path: a dense (rows, 1, seq, seq) mask
            assert all(isinstance(m, torch.Tensor) and m.shape == (2, 1, 64, 64) for m in masks)
        else:
            assert all(isinstance(m, BlockMask) and m.kv_num_blocks.shape == (2, 1, 1) for m in masks)
    assert torch.allclose(outputs["flex_attention"], outputs["sdpa"], atol=1e-5)

    # gradients: FlexAttention's eager reference path (no compile, the CPU backward check lifted)
    monkeypatch.setattr(flex, "_validate_device", lambda *tensors: None)
    monkeypatch.setattr(hf_flex, "compile_friendly_flex_attention",
                        lambda query, key, value, training=False, **kwargs: flex.flex_attention(query, key, value,
                                                                                                **kwargs))  # fmt: skip
    losses, gradients = {}, {}
    for attention, model in models.items():
        model.train()
        logits = model(**model_inputs(input_ids, positions, attention)).logits
        losses[attention] = torch.nn.functional.cross_entropy(logits.view(-1, 512), targets.view(-1))
        losses[attention].backward()
        gradients[attention] = {name: p.grad for name, p in model.named_parameters()}
    assert losses["flex_attention"].item() == pytest.approx(losses["sdpa"].item(), abs=1e-5)
    for name, gradient in gradients["sdpa"].items():
        assert torch.allclose(gradients["flex_attention"][name], gradient, atol=1e-5), name
    assert max(g.abs().max() for g in gradients["sdpa"].values()) > 1e-2  # gradients worth comparing


def test_windows_are_addressed_by_batch_number(tokens):
    windows = PackedWindows(tokens, "train", seq_len=32, seed=3)
    batch = windows.micro_batch(7, 1, 0, micro_batch_size=4, accumulation=2, world_size=1)
    # two processes split the same global batch between them
    halves = [windows.micro_batch(7, 0, rank, 4, 1, 2) for rank in (0, 1)]
    assert np.array_equal(batch.input_ids, halves[1].input_ids)
    assert np.array_equal(batch.targets[:, :-1], batch.input_ids[:, 1:])
    assert batch.input_ids.shape == (4, 32) and batch.position_ids.max() < 32
    # the order goes on past the end of an epoch, reshuffled
    epoch = len(windows)
    assert sorted(windows.windows_of_batch(0, epoch).tolist()) == list(range(epoch))
    assert not np.array_equal(windows.windows_of_batch(1, epoch), windows.windows_of_batch(0, epoch))


def test_schedules():
    cosine = Schedule("cosine", total_steps=101, warmup_steps=10)
    assert [cosine(s) for s in (0, 9)] == pytest.approx([0.1, 1.0])
    assert cosine(55) == pytest.approx(0.55) and cosine(100) == pytest.approx(0.1)
    wsd = Schedule("wsd", total_steps=100, warmup_steps=10, decay_fraction=0.2)
    assert [wsd(s) for s in (9, 50, 79)] == [1.0, 1.0, 1.0]
    assert wsd(89) == pytest.approx(0.55) and wsd(99) == pytest.approx(0.1)
    assert Schedule("constant", total_steps=100, warmup_steps=4)(50) == 1.0


def test_launch_commands_for_one_node_and_a_hostfile(tmp_path):
    import sys

    from llmforge.train.launch import launch_command, read_hostfile, world_size

    plan = tmp_path / "plan.json"
    assert launch_command(plan, 4, None, 29500) == [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "4",
        "--master-addr", "127.0.0.1", "--master-port", "29500", "-m", "llmforge.train.worker", str(plan),
    ]  # fmt: skip
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes of 8 GPUs\nnode-a slots=8\nnode-b slots=8  # second\n\n")
    assert read_hostfile(hostfile) == [("node-a", 8), ("node-b", 8)]
    assert world_size(1, hostfile) == 16 and world_size(4, hostfile) == 8 and world_size(3, None) == 3
    assert launch_command(plan, 1, hostfile, 29500) == [
        sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile), "--master_port", "29500",
        "--no_local_rank", "--module", "llmforge.train.worker", str(plan),
    ]  # fmt: skip
    assert launch_command(plan, 4, hostfile, 29500)[3:7] == ["--hostfile", str(hostfile), "--num_gpus", "4"]
    hostfile.write_text("node-a 8\n")
    with pytest.raises(InputError, match=r"hostfile:1: expected 'HOST slots=N'"):
        read_hostfile(hostfile)


def test_deepspeed_settings_from_flags_or_a_json_file(tmp_path, tokens):
    from llmforge.train.pretrain_plan import make_plan

    plan = make_plan(tokens, config(distributed__zero=2, distributed__offload="cpu"))
    section = plan.deepspeed["zero_optimization"]
    assert section["stage"] == 2 and section["offload_optimizer"]["device"] == "cpu"
    assert plan.deepspeed["gradient_accumulation_steps"] == 2 and plan.deepspeed["gradient_clipping"] == 1.0
    with pytest.raises(InputError, match="--offload cpu needs ZeRO stage 1, 2 or 3"):
        make_plan(tokens, config(distributed__offload="cpu"))

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 3, "overlap_comm": True},
                                "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto"}))  # fmt: skip
    plan = make_plan(tokens, config(distributed__deepspeed=str(user)))
    assert plan.deepspeed["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert (
        plan.deepspeed["train_micro_batch_size_per_gpu"] == 4 and plan.deepspeed["gradient_clipping"] == 1.0
    )
    assert plan.estimate.zero == 3
    user.write_text(json.dumps({"gradient_accumulation_steps": 8}))
    with pytest.raises(InputError, match="gradient_accumulation_steps is 8 but llmforge's settings give 2"):
        make_plan(tokens, config(distributed__deepspeed=str(user)))
    user.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(InputError, match="remove the 'optimizer' section"):
        make_plan(tokens, config(distributed__deepspeed=str(user)))
    user.write_text("{not json")
    with pytest.raises(InputError, match=r"ds.json:1: not valid JSON"):
        make_plan(tokens, config(distributed__deepspeed=str(user)))


def test_zero_0_clips_in_the_loop_as_deepspeeds_zero_optimizer_does_and_nothing_waits_for_the_device(
    tmp_path, tokens, monkeypatch
):
    """DeepSpeed's ZeRO-0 clipping (a norm per parameter, a threshold copied from the host: a wait for the GPU) and
    its synchronized throughput timer (a wait at every forward and engine.step) are left out: the loop clips with
    torch's fused clip_grad_norm_ and DeepSpeed never synchronizes the device. Clipping at every step, the run
    follows ZeRO-1's, where DeepSpeed's optimizer clips, step for step."""
    import deepspeed.runtime.engine as deepspeed_engine
    from deepspeed.accelerator import get_accelerator

    calls = {"clip_grad_norm_": 0, "synchronize": 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(
        deepspeed_engine, "clip_grad_norm_", counted("clip_grad_norm_", deepspeed_engine.clip_grad_norm_)
    )
    accelerator = get_accelerator()
    monkeypatch.setattr(accelerator, "synchronize", counted("synchronize", accelerator.synchronize))
    short = {"train_tokens": 256 * 6, "optim__grad_clip": 0.05, "checkpoint__every": 100, "eval__every": 0}
    zero_0 = read_jsonl(run(tokens, tmp_path / "zero-0", config(**short)) / "metrics.jsonl")
    assert calls == {"clip_grad_norm_": 0, "synchronize": 0}
    zero_1 = read_jsonl(
        run(tokens, tmp_path / "zero-1", config(**short, distributed__zero=1)) / "metrics.jsonl"
    )
    steps_0, steps_1 = ([r for r in records if "loss" in r] for records in (zero_0, zero_1))
    assert len(steps_0) == len(steps_1) == 6 and all(
        r["grad_norm"] > 0.05 for r in steps_0
    )  # clipped every step
    for ours, theirs in zip(steps_0, steps_1, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_mixture_of_experts_trains_its_router_and_saves_what_the_hub_reads(tmp_path, tokens, arch, capsys):
    """model.num_experts replaces every layer's MLP with experts and a top-k router (Mixtral for llama, Qwen3-MoE
    for qwen3): the loop adds the router's load-balancing loss and logs it, the plan and the stats count the active
    parameters apart from all of them, and the saved weights are one tensor per expert, as published MoE models
    are (llama.cpp and vLLM read those)."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from llmforge.card import make_card

    settings = config(model__arch=arch, model__num_experts=4, model__experts_per_token=2)
    out = run(tokens, tmp_path / "moe", settings)
    plan = capsys.readouterr().err
    assert "4 experts of ffn 384, top-2 routing" in plan
    assert "cross-entropy + 0.01 x the router's load-balancing loss" in plan
    stats = Artifact.open(out).stats
    assert stats_mismatches(out) == []
    assert (stats["experts"], stats["experts_per_token"]) == (4, 2)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == {"llama": "MixtralForCausalLM", "qwen3": "Qwen3MoeForCausalLM"}[arch]
    assert stats["parameters"] == sum(p.numel() for p in model.parameters())  # the plan's count
    # a token passes through 2 of the 4 experts: 2 experts' SwiGLU (3 x 128 x 384) fewer per layer, 4 layers
    assert stats["active_parameters"] == stats["parameters"] - 4 * 2 * 3 * 128 * 384
    assert stats["training_flops"] == 6 * stats["active_parameters"] * stats["tokens"]
    assert stats["loss_final"] < stats["loss_first"] - 1.0
    # logged every step; 2 (the top-k) when tokens are spread evenly, up to 4 when all go to the same 2 experts
    balance = [r["router_balance"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert len(balance) == STEPS and all(1.8 < value < 2.5 for value in balance)  # measured: 1.95-2.19
    assert stats["router_balance_final"] == balance[-1]
    with safe_open(out / "model.safetensors", "pt") as weights:
        names = set(weights.keys())
    expert = {"llama": "model.layers.0.block_sparse_moe.experts.3.w1.weight",
              "qwen3": "model.layers.0.mlp.experts.3.gate_proj.weight"}[arch]  # fmt: skip
    assert expert in names and not any("gate_up_proj" in name for name in names)
    card = make_card(out, None, None)
    assert (
        f"4 experts a layer, 2 per token: {stats['active_parameters']:,} parameters active per token" in card
    )


def test_moe_settings_that_cannot_work_are_refused_and_a_moe_model_is_continued(tmp_path, tokens, pretrained,
                                                                                 capsys):  # fmt: skip
    from transformers import AutoConfig

    for changes, message in (({"model__num_experts": 1}, "num_experts 1 is a dense MLP with a router"),
                             ({"model__num_experts": 4, "model__experts_per_token": 5},
                              "experts_per_token 5 is more than num_experts 4")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            config(**changes)
    refused = llmforge("pretrain", tokens, "-o", tmp_path / "cli", "--num-experts", "1", check=False)
    assert refused.returncode == 2 and "num_experts 1 is a dense MLP" in refused.stderr
    with pytest.raises(
        InputError, match="model.router_aux_loss: a dense model has no router; set model.num_experts"
    ):
        run(tokens, tmp_path / "a", config(model__router_aux_loss=0.1))
    with pytest.raises(InputError, match="model.router_aux_loss: .* is a dense llama; it has no router"):
        run(tokens, tmp_path / "b", continued(pretrained, model={"router_aux_loss": 0.1}))
    with pytest.raises(InputError, match="the architecture comes from that model; drop model.num_experts"):
        run(tokens, tmp_path / "c", continued(pretrained, model={"num_experts": 4}))
    assert not any((tmp_path / name).exists() for name in "abc")

    # continuing a mixture of experts keeps its router's coefficient unless one is given
    moe = run(tokens, tmp_path / "moe", config(model__num_experts=4, train_tokens=256 * 4, eval__every=0))
    capsys.readouterr()
    run(tokens, tmp_path / "same", continued(moe, train_tokens=256 * 2, eval__every=0), dry_run=True)
    assert "cross-entropy + 0.01 x the router's load-balancing loss" in capsys.readouterr().err
    out = run(tokens, tmp_path / "more", continued(moe, train_tokens=256 * 2, eval__every=0,
                                                   model={"router_aux_loss": 0.05}))  # fmt: skip
    assert "cross-entropy + 0.05 x the router's load-balancing loss" in capsys.readouterr().err
    saved = AutoConfig.from_pretrained(out)
    assert saved.model_type == "mixtral" and saved.router_aux_loss_coef == 0.05
    assert Artifact.open(out).stats["experts"] == 4 and "router_balance_final" in Artifact.open(out).stats


def test_the_moe_objective_is_transformers_own():
    """What the loop trains a mixture of experts on is transformers' MoE loss: the cross-entropy plus the
    coefficient times its load-balancing loss over every layer's router logits."""
    import torch

    from llmforge.model.llama import build_config, build_model
    from llmforge.train.loop import token_cross_entropy

    model = build_model(build_config("tiny", 512, {}, num_experts=4, router_aux_loss=0.1), seed=0)
    trainer = Trainer.__new__(Trainer)  # only what `objective` reads
    trainer.spec = type("Spec", (), {"attention": "sdpa"})()
    trainer.z_loss, trainer.router_aux, trainer.cross_entropy = 0.0, 0.1, token_cross_entropy
    window = torch.randint(0, 512, (2, 33), generator=torch.Generator().manual_seed(0))
    inputs, targets = window[:, :-1].contiguous(), window[:, 1:].contiguous()  # as the loop's batches are
    positions = torch.arange(32).expand(2, 32)
    loss, objective, terms = trainer.objective(model, (inputs, targets, positions))
    theirs = model(inputs, labels=targets, shift_labels=targets, output_router_logits=True)
    assert torch.allclose(objective, theirs.loss) and torch.allclose(terms["router_balance"], theirs.aux_loss)
    assert torch.allclose(loss, token_cross_entropy(theirs.logits, targets))
    assert objective > loss  # the balance term is in what is backpropagated
