"""The resolution sweep's shape (not its timings): rows per model and resolution, MAC parity from counted MACs,
the efficiency-gap split, the plots, the markdown section, and clear refusals."""

import re

import pytest

from convdiff.apps.benchmarks import resolution

TINY = ["--models", "dic-tiny", "--baseline", "dit-tiny", "--resolutions", "64", "--rounds", "1",
        "--train-rounds", "1", "--threads", "1"]


def test_the_sweep_writes_its_table_plots_and_section(tmp_path, capsys):
    output, plots = tmp_path / "benchmarks.md", tmp_path / "plots"
    assert resolution.main([*TINY, "--profile", "--output", str(output), "--plots", str(plots)]) == 0
    section = output.read_text()
    assert section.lstrip("\n") in capsys.readouterr().out  # what is printed is what is appended
    rows = [line for line in section.splitlines() if re.match(r"\| (dic|dit)-tiny \| 64 \|", line)]
    assert len(rows) == 2 * 3  # the time table, a row per model; the efficiency gap, forward and training rows
    gap_rows = [r for r in rows if r.count("|") == 8]
    assert [r.split(" | ")[2] for r in gap_rows] == ["forward", "train"] * 2
    conv_rows = [r.split(" | ") for r in rows if r.startswith("| dic-tiny") and r.count("|") == 11]
    assert len(conv_rows) == 1 and all(row[6].endswith("x") and row[8].endswith("x") for row in conv_rows)
    assert "Matmul rate measured in this run" in section and "Command: `convdiff bench-resolution" in section
    assert sorted(p.name.split("-2")[0] for p in plots.iterdir()) == ["efficiency-gap", "resolution"]
    assert all(p.stat().st_size > 1000 for p in plots.iterdir())


def test_mac_parity_is_the_baselines_macs_over_the_models():
    cells = {("conv", 256): resolution.Cell("conv", 256, forward=[1.0], macs={"dense": 10, "attention": 0}),
             ("dit", 256): resolution.Cell("dit", 256, forward=[3.0], macs={"dense": 20, "attention": 20})}
    table = resolution.table(cells, [256], ["conv", "dit"], [("conv", "dit")])
    row = next(line for line in table.splitlines() if line.startswith("| conv |")).split(" | ")
    assert row[6] == "3.00x" and row[8] == "4.00x" and row[9] == "75% |"  # 3x measured at 4x the MACs: 75%


def test_clear_refusals(capsys):
    with pytest.raises(SystemExit):
        resolution.parse_args(["--resolutions", "100"])
    assert "multiples of 32" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        resolution.parse_args(["--precision", "fp16"])
    assert "needs --device cuda" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        with pytest.raises(SystemExit, match="torch sees no CUDA device"):
            resolution.check_device("cuda")


def test_profile_counts_fast_conv_and_native_ops_in_their_kinds():
    """The GEMM route's fused linear + GELU is dense work; nn/norm_modulate.py's kernel is counted (as other)."""
    import torch

    from convdiff.nn import norm_modulate
    from convdiff.registry import create_model

    if not norm_modulate.native_available():
        norm_modulate.build()
    model = create_model("dico-tiny", sample_size=8).eval()
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.tensor([1])

    class Event:
        def __init__(self, key):
            self.key, self.input_shapes = key, []

    assert resolution.kind_of(Event("mkldnn::_linear_pointwise")) == "dense"
    backward = Event("aten::convolution_backward")  # (grad_output, input, weight, ...): the weight comes third
    backward.input_shapes = [[1, 8, 4, 4], [1, 8, 4, 4], [8, 1, 3, 3]]
    assert resolution.kind_of(backward) == "depthwise conv"
    backward.input_shapes = [[1, 8, 4, 4], [1, 8, 4, 4], [8, 8, 1, 1]]
    assert resolution.kind_of(backward) == "dense"
    assert resolution.kind_of(Event("convdiff::norm_modulate")) == "other"
    with torch.inference_mode():
        seconds = resolution.profile_kinds(lambda: model(x, t, y), "cpu")
        with torch.profiler.profile() as prof:
            model(x, t, y)
    native = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key == "convdiff::norm_modulate")
    assert native > 0 and seconds["dense"] > 0 and seconds["other"] > 0
