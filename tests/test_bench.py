"""The benchmark's FLOP counting and table formatting (no timing assertions)."""

import pytest
import torch
from torch import nn

from convdiff.apps.benchmarks import forward as bench
from convdiff.apps.benchmarks import instruments
from convdiff.registry import create_model


def test_depthwise_and_grouped_conv_counted_per_group():
    conv = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 32, 3, padding=1, groups=4))
    x = torch.randn(2, 16, 8, 8)
    flops, _ = instruments.count_flops(conv, (x,))
    expected_macs = 2 * 8 * 8 * (16 * 1 * 9 + 32 * 4 * 9)
    assert flops == 2 * expected_macs
    counts = instruments.analytic_macs(conv, (x,))
    assert counts["depthwise/grouped conv"] == expected_macs and counts["total"] == expected_macs


def test_cpu_attention_is_counted():
    class Attn(nn.Module):
        def forward(self, q):
            return nn.functional.scaled_dot_product_attention(q, q, q)

    q = torch.randn(2, 3, 16, 8)
    flops, by_op = instruments.count_flops(Attn(), (q,))
    assert flops == 2 * (2 * 3 * 16 * 16 * (8 + 8))
    assert instruments.analytic_macs(Attn(), (q,))["attention"] == flops // 2


def test_counters_agree_on_tiny_models_and_tables_format():
    results = []
    for name in ("dic-tiny", "dit-tiny"):
        model = bench.build(name)
        inputs = bench.make_inputs(1, model, channels_last=False)
        flops, by_op = instruments.count_flops(model, inputs)
        macs = instruments.analytic_macs(model, inputs)["total"]
        assert flops > 0 and abs(flops / 2 - macs) <= 1e-3 * macs, (name, flops, macs)
        r = bench.Result(name, "fp32", "NCHW", 1, sum(p.numel() for p in model.parameters()), flops, by_op, macs)
        r.times = [0.01, 0.02, 0.03]
        results.append(r)
    assert results[0].images_per_second == 50.0
    table = bench.format_results_table(results, bench.DEFAULT_PEAKS)
    lines = table.splitlines()
    assert len(lines) == 2 + len(results) and lines[2].startswith("| dic-tiny | fp32 | NCHW | 1 |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    check = bench.format_flop_check_table(results)
    assert "| yes |" in check and "NO" not in check


def test_ratio_table_reports_shortfall():
    def fake(name, ips):
        r = bench.Result(name, "fp32", "NCHW", 1, 0, 2, {}, 1)
        r.times = [1 / ips]
        return r

    table = bench.format_ratio_table([fake("dico-s", 120.0), fake("dit-s-2", 100.0)], ["fp32"])
    assert "| dico-s / dit-s-2 | fp32 | NCHW / NCHW | 1.20x |" in table and "| no |" in table


def test_main_no_write_on_tiny_model(tmp_path, capsys):
    out = tmp_path / "bench.md"
    assert bench.main(["--models", "dico-tiny", "--precisions", "fp32", "--batch-size", "1", "--iters", "1",
                       "--warmup", "0", "--output", str(out)]) == 0
    text = out.read_text()
    assert "## Run" in text and "| dico-tiny | fp32 | NCHW | 1 |" in text and "Command: `python scripts/benchmark.py" in text
    assert bench.main(["--models", "dico-tiny", "--precisions", "fp32", "--batch-size", "1", "--iters", "1",
                       "--warmup", "0", "--no-write", "--output", str(tmp_path / "none.md")]) == 0
    assert not (tmp_path / "none.md").exists()


def test_plan_batch_shrinks_or_skips_to_fit_the_budget():
    assert bench.plan_batch(8, 0.1, 40) == 8  # fits
    assert bench.plan_batch(8, 5.0, 40) == 4  # two passes of 4 images fit
    assert bench.plan_batch(2, 30.0, 40) == 1
    assert bench.plan_batch(2, 60.0, 40) == 0  # one image alone is over budget: skipped
    assert bench.plan_batch(8, 60.0, 0) == 8  # no budget


@pytest.mark.slow
def test_regional_compile_benchmark_appends_a_section(tmp_path):
    from convdiff.apps.benchmarks import regional_compile

    out = tmp_path / "bench.md"
    assert regional_compile.main(["--models", "diffit-tiny", "--batch", "1", "--rounds", "1", "--repeats", "1",
                                  "--output", str(out)]) == 0
    text = out.read_text()
    assert "## Regional vs whole-model compilation" in text and "fp32 matmul rate in this run" in text
    assert "| diffit-tiny | 2 | regional | 1 |" in text  # two identical blocks: one graph
    assert "graphs compiled while timing (recompilations): 0" in text
