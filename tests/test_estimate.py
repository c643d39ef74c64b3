"""llmforge estimate: golden numbers from the seeds and from published model shapes."""

import json

import pytest
from helpers import llmforge

from llmforge.errors import InputError
from llmforge.model.estimate import (
    ModelShape,
    describe_measured_mfu,
    device_key,
    device_peak_flops,
    estimate,
    measured_mfu,
    mfu_setting,
    parse_count,
    resolve_shape,
    training_memory,
)

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=32,
                 intermediate_size=11008, tie_embeddings=False)  # fmt: skip


def test_seven_billion_parameters_need_112_gb_or_14_per_gpu_over_eight():
    result = estimate(params=7e9, devices=8, zero=3)
    assert result.memory_per_device[0]["total"] == pytest.approx(
        112e9
    )  # 16 bytes/param, mixed-precision Adam
    assert result.memory_per_device[3]["total"] == pytest.approx(14e9)  # fully sharded over 8
    assert result.memory_per_device[1]["total"] == pytest.approx(7e9 * (2 + 2) + 7e9 * 12 / 8)
    assert result.memory_per_device[2]["total"] == pytest.approx(7e9 * 2 + 7e9 * (2 + 12) / 8)
    assert result.chinchilla_tokens == pytest.approx(140e9) and result.tokens_per_parameter == pytest.approx(
        20
    )
    assert result.training_flops == pytest.approx(6 * 7e9 * 140e9)


def test_seventy_billion_in_fp32_is_280_gb_of_weights():
    assert estimate(params=70e9, precision="fp32").weights_bytes["fp32"] == pytest.approx(280e9)
    assert training_memory(70e9, zero=0, devices=1, precision="fp32")["weights"] == pytest.approx(280e9)
    assert training_memory(70e9, zero=0, devices=1, precision="fp32")["optimizer"] == pytest.approx(560e9)


def test_offload_moves_optimizer_states_and_zero3_weights_to_cpu():
    zero2 = training_memory(7e9, zero=2, devices=8, precision="bf16", offload="cpu")
    assert zero2["optimizer"] == 0 and zero2["cpu_optimizer"] == pytest.approx(7e9 * 12 / 8)
    zero3 = training_memory(7e9, zero=3, devices=8, precision="bf16", offload="cpu")
    assert zero3["total"] == pytest.approx(7e9 * 2 / 8) and zero3["cpu_weights"] == pytest.approx(7e9 * 2 / 8)


def test_shapes_count_parameters_kv_cache_and_flops_like_the_published_models():
    llama2 = ModelShape(**LLAMA2_7B)
    assert llama2.parameters() == 6_738_415_616  # Llama-2-7b-hf
    assert llama2.kv_cache_bytes(4096) == 2 * 32 * 32 * 128 * 4096 * 2  # 0.5 MB per token in bf16
    assert llama2.flops_per_token(4096) == pytest.approx(
        6 * (llama2.parameters() - 32000 * 4096) + 12 * 32 * 4096 * 4096
    )
    gqa = ModelShape(**{**LLAMA2_7B, "num_kv_heads": 8})
    assert gqa.kv_cache_bytes(4096) == llama2.kv_cache_bytes(4096) / 4


def test_a_mixture_of_experts_counts_all_its_parameters_and_computes_with_the_active_ones():
    """Mixtral 8x7B (8 experts, top-2) and Qwen3-30B-A3B (128 experts of 768, top-8, 128-dimension heads) from
    their config.json: the totals and active counts their model cards give (Qwen's rounds 3.35B down to 3.3B)."""
    mixtral = ModelShape.from_hf_config(dict(
        model_type="mixtral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2))  # fmt: skip
    assert (mixtral.parameters(), mixtral.parameters(active=True)) == (46_702_792_704, 12_879_925_248)
    qwen = ModelShape.from_hf_config(dict(
        model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=48, num_attention_heads=32,
        num_key_value_heads=4, head_dim=128, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
        num_experts_per_tok=8))  # fmt: skip
    assert round(qwen.parameters() / 1e9, 1) == 30.5 and round(qwen.parameters(active=True) / 1e9, 2) == 3.35
    # training FLOPs follow the active parameters, memory all of them
    numbers = estimate(shape=mixtral, tokens=1e12)
    assert numbers.training_flops == 6 * 12_879_925_248 * 1e12
    assert numbers.memory_per_device[0]["weights"] == 2 * 46_702_792_704
    assert mixtral.flops_per_token(2048) == pytest.approx(
        6 * (mixtral.parameters(active=True) - 32000 * 4096) + 12 * 32 * 4096 * 2048
    )
    # the command line: a preset or explicit dimensions made sparse
    table = llmforge("estimate", "--hidden", "4096", "--layers", "32", "--heads", "32", "--kv-heads", "8",
                     "--intermediate", "14336", "--untied", "--experts", "8", "--experts-per-token", "2")  # fmt: skip
    assert "│ parameters " in table.stderr and "46.7B" in table.stderr and "12.9B" in table.stderr
    sparse = json.loads(llmforge("estimate", "tiny", "--vocab", "512", "--experts", "4", "--json").stdout)
    assert (
        sparse["parameters"] == 2_624_640 and sparse["active_parameters"] == 1_444_992
    )  # as pretrain counts
    assert llmforge("estimate", "tiny", "--experts-per-token", "2", check=False).returncode == 2


def test_gpu_hours_and_cost():
    result = estimate(params=7e9, gpu="NVIDIA H100 80GB HBM3", mfu=0.4, price_per_gpu_hour=2.0)
    hours = 6 * 7e9 * 140e9 / (989e12 * 0.4) / 3600
    assert result.gpu_hours == pytest.approx(hours) and result.cost == pytest.approx(2 * hours)
    assert (
        device_peak_flops("NVIDIA H100 PCIe") == 756e12
        and device_peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    )
    assert device_peak_flops("some CPU") is None
    with pytest.raises(InputError, match="peak FLOP/s unknown"):
        estimate(params=1e9, gpu="Voodoo2")


def test_the_mfu_to_expect_is_what_was_measured_and_nothing_else():
    """Only the GPU runs of bench/RESULTS.md are measurements: 125m on an H100 (15.9% eager, 25.8% compiled, SDPA
    with the dense mask), the H200 sweeps (FlexAttention compiled: 125m 33.1-36.0%, 350m 42.0-43.0%, 1b 52.7%),
    the H100 sweep (FlexAttention compiled: 125m 36.4-36.5%, 350m 42.2-42.4%, 1b 52.0%), every run kept so the
    plan can give the spread."""
    compiled_flex = mfu_setting("flex_attention", True, "none")
    assert compiled_flex == "torch.compile, FlexAttention block masks"
    h100 = measured_mfu("125m", "NVIDIA H100 80GB HBM3")
    assert sorted(h100.values()) == [(0.159,), (0.258,), (0.365, 0.365, 0.364)]
    assert all("SDPA with a dense document mask" in setting for setting in h100 if setting != compiled_flex)
    assert measured_mfu("1b", "H100") == {compiled_flex: (0.520, 0.520, 0.520)}
    assert [measured_mfu(p, "NVIDIA H200")[compiled_flex] for p in ("125m", "350m", "1b")] == [
        (0.360, 0.331, 0.331, 0.334),
        (0.430, 0.420, 0.421, 0.424),
        (0.527,),
    ]
    assert measured_mfu("350m", "H200")[mfu_setting("flex_attention", False, "liger")] == (0.289,)
    assert measured_mfu("125m", "H200")[mfu_setting("sdpa", False, "none")] == (0.169,)
    # each Liger kernel on its own, named as the `kernels` setting names it
    assert measured_mfu("125m", "H200")[
        mfu_setting("flex_attention", False, "fused_linear_cross_entropy")
    ] == (0.186,)
    assert mfu_setting("eager", False, "none") not in measured_mfu("125m", "H200")
    assert device_key("NVIDIA GH200 480GB") == "GH200"  # not H200
    for preset, gpu in (("7b", "NVIDIA H100 80GB HBM3"), ("7b", "NVIDIA H200"),
                        ("125m", "NVIDIA H100 PCIe"), ("125m", None), (None, "H100")):  # fmt: skip
        assert measured_mfu(preset, gpu) == {}, (preset, gpu)
    # a run's own setting comes first; a setting nobody measured lists the others
    line = describe_measured_mfu("1b", "NVIDIA H200", compiled_flex)
    assert line.startswith("52.7% measured for 1b on H200 with these settings (torch.compile, FlexAttention")
    line = describe_measured_mfu("350m", "NVIDIA H200", compiled_flex)
    assert line.startswith("42.0-43.0% (4 runs) measured for 350m on H200 with these settings")
    line = describe_measured_mfu(
        "1b", "NVIDIA H200", mfu_setting("sdpa", True, "none", document_masking=False)
    )
    assert line.startswith("not measured with these settings (torch.compile, SDPA, causal); measured for 1b on "
                           "H200: 52.7% torch.compile, FlexAttention block masks; 32.5% eager, SDPA")  # fmt: skip
    assert (
        mfu_setting("flex_attention", False, "rms_norm,swiglu")
        == "eager, FlexAttention block masks, Liger rms_norm + swiglu"
    )
    # a shape knows which preset it is, whatever its vocabulary; explicit dimensions are no preset
    assert ModelShape.from_preset("350m", 32768).preset() == "350m"
    assert ModelShape.from_preset("1b", 50000).preset() == "1b"
    assert ModelShape(**LLAMA2_7B).preset() is None
    assert estimate(shape=ModelShape.from_preset("125m", 32768), gpu="H100").measured_mfu == h100
    assert estimate(shape=ModelShape.from_preset("7b", 32768), gpu="H200").measured_mfu == {}
    assert estimate(shape=ModelShape.from_preset("1b", 32768)).measured_mfu is None  # no GPU named

    table = " ".join(llmforge("estimate", "125m", "--vocab", "32768", "--gpu", "H100").stderr.split())
    assert "MFU to expect" in table and "measured for 125m on H100: 15.9% eager" in table
    assert "25.8% torch.compile" in table and "GPU-hours at 40% MFU (--mfu)" in table
    h200 = " ".join(llmforge("estimate", "1b", "--vocab", "32768", "--gpu", "NVIDIA H200").stderr.split())
    assert "measured for 1b on H200: 52.7% torch.compile, FlexAttention block masks" in h200
    other = " ".join(llmforge("estimate", "7b", "--gpu", "NVIDIA H200").stderr.split())
    assert "not measured for 7b on H200 (bench/bench_gpu.sh measures it)" in other


def test_shapes_from_presets_dimensions_and_model_directories(tiny_model):
    assert resolve_shape("tiny", vocab_size=512).parameters() == 853_120
    assert resolve_shape(
        None, hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008
    ).parameters() == (6_738_415_616)
    assert resolve_shape(str(tiny_model)).parameters() == 853_120
    assert resolve_shape(str(tiny_model), num_layers=8).num_layers == 8
    assert resolve_shape(None) is None
    with pytest.raises(InputError, match="neither a preset"):
        resolve_shape("huge")
    with pytest.raises(InputError, match="missing num_attention_heads, intermediate_size"):
        resolve_shape(None, hidden_size=64, num_layers=2)
    assert parse_count("7B") == 7e9 and parse_count("350m") == 350e6 and parse_count("1.5e12") == 1.5e12
    with pytest.raises(InputError, match="expected a number like 7B"):
        parse_count("lots")


def test_estimate_command(tmp_path):
    result = llmforge("estimate", "--params", "7B", "--gpus", "8", "--zero", "3", "--json")
    numbers = json.loads(result.stdout)
    assert (
        numbers["memory_per_device"]["0"]["total"] == 112e9
        and numbers["memory_per_device"]["3"]["total"] == 14e9
    )
    assert numbers["chinchilla_tokens"] == 140e9
    table = llmforge("estimate", "--params", "70B", "--precision", "fp32", "--gpu", "A100", "--price", "1.5")
    assert table.stdout == ""
    assert "fp32 280 GB" in table.stderr and "ZeRO-0 per device (1 x, fp32) <" in table.stderr
    assert "cost at 1.5/GPU-hour" in table.stderr
    bad = llmforge("estimate", "--params", "many", check=False)
    assert bad.returncode == 2 and "expected a number like 7B" in bad.stderr
