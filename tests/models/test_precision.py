"""The CPU precision choice (issue 14): the decision logic needs no particular CPU; the measurement and
its cache run on whatever CPU the tests run on."""

import json
import time

import pytest

from glue_astrovlm.models.precision import (BF16_MARGIN, BlockShape, bf16_instructions, block_shape,
                                            choose_cpu_dtype, cpu_dtype, measure_block)

XEON_AMX = "processor : 0\nmodel name : Intel(R) Xeon(R) Platinum 8480+\nflags : fpu sse avx2 avx512f " \
           "avx512_bf16 amx_bf16 amx_tile amx_int8\n"
EPYC = "processor : 0\nmodel name : AMD EPYC 7B13\nflags : fpu sse avx2 fma\n"
ARM = "processor : 0\nFeatures : fp asimd bf16 i8mm sve\n"


def test_bf16_instructions_are_read_from_the_cpu_flags():
    assert bf16_instructions(XEON_AMX) == ["amx_bf16", "avx512_bf16"]
    assert bf16_instructions(EPYC) == []
    assert bf16_instructions(ARM) == ["bf16"]
    assert bf16_instructions("") == []


@pytest.mark.parametrize("fp32, bf16, expected", [
    ([1.0, 1.0, 1.0], [0.4, 0.4, 0.4], "bfloat16"),        # AMX: 2.5x faster
    ([1.0, 1.0, 1.0], [3.5, 3.4, 3.6], "float32"),         # emulated bf16: 3.5x slower
    ([1.0, 1.0, 1.0], [0.95, 0.93, 0.97], "float32"),      # within 10%: float32 is exact and close enough
    ([1.0, 6.0, 1.0, 1.0, 5.0], [0.4, 2.4, 0.41, 0.39, 2.0], "bfloat16"),  # other jobs slow both alike
])
def test_the_choice_follows_the_median_interleaved_ratio(fp32, bf16, expected):
    dtype, reason = choose_cpu_dtype(["amx_bf16"], {"float32": fp32, "bfloat16": bf16})
    assert dtype == expected
    assert "median of" in reason and "interleaved" in reason


def test_load_that_hits_one_precision_in_one_round_does_not_flip_the_choice():
    """The old rule timed float32 then bfloat16 in two blocks of repetitions: a job starting halfway
    slowed only one of them. Per-round ratios with their median keep the answer."""
    steady = {"float32": [1.0] * 5, "bfloat16": [0.4] * 5}
    loaded = {"float32": [1.0, 1.0, 1.0, 1.0, 1.0], "bfloat16": [0.4, 3.0, 0.4, 0.42, 0.4]}
    assert choose_cpu_dtype(["amx_bf16"], steady)[0] == choose_cpu_dtype(["amx_bf16"], loaded)[0] == "bfloat16"


def test_the_margin_keeps_the_choice_within_ten_percent_of_the_faster():
    assert BF16_MARGIN == pytest.approx(0.9)
    for ratio in (0.5, 0.89, 0.91, 1.0, 1.1, 3.0):
        dtype, _ = choose_cpu_dtype([], {"float32": [1.0], "bfloat16": [ratio]})
        chosen = ratio if dtype == "bfloat16" else 1.0
        assert chosen <= 1.1 * min(1.0, ratio)


def test_block_shape_follows_each_models_vision_tower():
    from transformers import AutoConfig

    from glue_astrovlm.testing import SHARED_SMOLVLM_CONFIG

    shape = block_shape(AutoConfig.from_pretrained(SHARED_SMOLVLM_CONFIG))
    assert (shape.hidden, shape.intermediate) == (768, 3072) and 16 <= shape.tokens <= 256


def test_the_measurement_runs_interleaved_and_the_choice_is_cached(tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setenv("ASTROVLM_CONFIG_DIR", str(tmp_path))
    shape = BlockShape(tokens=32, hidden=64, intermediate=128)
    times = measure_block(shape, rounds=3)
    assert set(times) == {"float32", "bfloat16"} and 2 <= len(times["float32"]) == len(times["bfloat16"]) <= 3
    config = SimpleNamespace(hidden_size=64, intermediate_size=128, image_size=96, patch_size=16)
    first = cpu_dtype(config)
    cache = json.loads((tmp_path / "cpu-precision.json").read_text())
    entry, = cache.values()
    assert entry["dtype"] == first and entry["shape"] == {"tokens": 36, "hidden": 64, "intermediate": 128}
    began = time.perf_counter()
    assert cpu_dtype(config) == first
    assert time.perf_counter() - began < 0.05  # from the cache: no measurement
