"""`vaelab compare RUN_OR_SWEEP... [--by KEY] [--out DIR]`: one table of settings, mean ± s.e. across seeds.

Run directories are found recursively under the given paths. A run's numbers come from its eval.json; what it
was (config keys, seed, epochs) from eval.json's provenance fields where present, else from config.yaml and
metrics.jsonl. Runs are grouped into settings by `--by` keys, or by every config key that differs between runs
(other than the seed, name, description and device); a key that a run's config.yaml lacks, because an older
vaelab wrote it, counts as that key's default, so a key added later does not split old runs from new. Within a
setting, each run (seed) contributes one number, and ± is the standard error of their mean; settings that share
seeds are also compared seed by seed (paired differences, with a 95% t interval). Outputs: markdown on stdout, and
with --out compare.md, compare.json (also each setting's per-epoch curves: mean, s.e. and runs per epoch) and a
self-contained compare.html with those curves drawn (mean line and s.e. band across seeds).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.experiments.compare import compare


def cmd_compare(args: argparse.Namespace) -> None:
    """Print the comparison's markdown; with --out also write compare.{md,json,html} and say where."""
    print(compare(args.paths, args.by, args.out))
    if args.out:
        print(f"wrote {Path(args.out) / 'compare.html'}, compare.json and compare.md")


def add_compare(sub) -> None:
    """Register `vaelab compare` on the CLI's subparsers."""
    c = sub.add_parser("compare", help="one table of settings: mean ± s.e. across seeds, paired differences",
                       description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("paths", nargs="+", metavar="RUN_OR_SWEEP", help="run directories, sweep directories or parents")
    c.add_argument("--by", action="append", default=[], metavar="KEY",
                   help="dotted config key that defines a setting (repeatable); default: every key that differs "
                        "between runs other than train.seed")
    c.add_argument("--out", help="folder for compare.md, compare.json and compare.html (default: markdown only)")
    c.set_defaults(func=cmd_compare)
