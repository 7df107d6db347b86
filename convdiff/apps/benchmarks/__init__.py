"""Every benchmark of convdiff, one module each; `scripts/benchmark*.py` are thin entry points to their `main()`.

- `instruments.py`: what they all measure with: FLOP counts (`count`, `count_flops`, `analytic_macs`), the
  machine (`machine_line`), the matmul peak (`measure_matmul_peak`), other processes' CPU use (`CpuMeter`),
  alternated timing (`round_robin`)
- `model_paths.py`: the paths a denoiser runs on (nchw / default / compiled), shared by the path benchmarks
- `forward.py`: inference throughput, counted FLOPs and share of the matmul peak (`convdiff bench`,
  `scripts/benchmark.py`)
- `training.py`: quality per compute on MNIST (`scripts/benchmark_training.py`)
- `train_speed.py`: training-step img/s, NCHW vs channels-last vs compiled (`scripts/benchmark_train_speed.py`)
- `paths.py`: DiC / DiCo vs DiT at the default and the best path, forward, training step and sampling, in one
  alternated run (`convdiff bench-paths`, `scripts/benchmark_paths.py`)
- `attention.py`: DiffiT vs DiT and the attention backends (`scripts/benchmark_attention.py`)
- `layered.py`: the layered U-Net against a single-resolution U-Net (`scripts/benchmark_layered.py`)
- `convfusion.py`: self-attention vs linear attention vs ΔConvBlock on SD1.5's layers (`scripts/benchmark_convfusion.py`)
- `spatiotemporal.py`: view-time mixing designs on V x T grids (`scripts/benchmark_spatiotemporal.py`)
- `regional_compile.py`: regional vs whole-model compilation, compile time and speed
  (`scripts/benchmark_regional_compile.py`)

Each prints markdown tables and appends them, with command, machine and date, to docs/benchmarks.md.
"""
