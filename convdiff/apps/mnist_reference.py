"""`python -m convdiff.apps.mnist_reference`: write the Inception features of the held-out digits that ship with
the MNIST protocol (eval/mnist.py `write_reference_features`; by default over
eval/assets/mnist-heldout-inception.npz)."""

import argparse

from ..eval.mnist import REFERENCE_FEATURES, write_reference_features


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m convdiff.apps.mnist_reference",
                                     description="write the shipped Inception features of the held-out digits")
    parser.add_argument("--output", default=str(REFERENCE_FEATURES))
    parser.add_argument("-n", type=int, default=500)
    args = parser.parse_args(argv)
    print(f"wrote {write_reference_features(args.output, args.n)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
