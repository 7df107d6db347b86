"""`python -m convdiff.apps.digit_classifier`: train the MNIST digit classifier of the class-accuracy protocol
(eval/digit_classifier.py) on the training digits and write its weights, with the held-out accuracy in the file's
metadata (by default over the shipped eval/assets/mnist-classifier.safetensors)."""

import argparse
from pathlib import Path

from safetensors.torch import save_file

from ..eval.digit_classifier import WEIGHTS, train_digit_classifier


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m convdiff.apps.digit_classifier", description=__doc__)
    parser.add_argument("--output", default=str(WEIGHTS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    model, accuracy = train_digit_classifier(args.epochs, seed=args.seed)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(output), metadata={"heldout_accuracy": f"{accuracy:.4f}",
                                                         "epochs": str(args.epochs), "seed": str(args.seed)})
    print(f"held-out accuracy {accuracy:.4f} (1,000 digits); wrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
