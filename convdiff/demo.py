"""The earlier path of the MNIST protocol helpers, named in README and in older scripts: they live in
`convdiff.apps.mnist_demo` (the `convdiff mnist-demo` command). New code imports them from there."""

from .apps.mnist_demo import mnist_fid, mnist_samples, mnist_scores  # noqa: F401
