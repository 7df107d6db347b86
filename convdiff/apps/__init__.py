"""Applications on top of the library layers: the `convdiff` commands, the CPU demos and the benchmarks.

Each module here is an entry point that may import any layer of convdiff; nothing in the library imports this
package (tests/test_imports.py; docs/architecture.md). `convdiff/cli.py` dispatches to these modules lazily.

- `train.py`, `distill.py`, `convert.py`, `fid.py`, `extract_latents.py`: `convdiff train`, `distill`, `convert`,
  `fid`, `extract-latents` (each parses its arguments before importing torch)
- `sample.py`: `convdiff sample` (grids and ADM-format .npz samples, `generate`)
- `mnist_demo.py`: `convdiff mnist-demo` and the project's MNIST protocol (`mnist_scores`)
- `controlnet_demo.py`: `convdiff controlnet-demo`
- `video_demo.py`: `convdiff video-demo`
- `digit_classifier.py`, `mnist_reference.py`: `python -m` commands that rewrite the MNIST protocol's shipped
  assets (eval/assets/)
- `benchmarks/`: every benchmark; `scripts/benchmark*.py` are thin entry points to them
"""
