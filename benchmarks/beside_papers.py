"""The "Reproduced" table of RESULTS.md beside the published figures, recomputed from the committed per-seed files.

    python benchmarks/beside_papers.py    # the Markdown table; writes benchmarks/results/beside_papers.json

Each row reads benchmarks/results/published/seeds/NAME-sS/eval-kK.json (one per training seed, written by
`vaelab evaluate RUN --iw-samples K`), takes the test negative log-likelihood -iw_loglik per seed, and reports their
mean with the standard error across seeds, the Monte Carlo standard error of that mean (sqrt(sum mc_i^2) / n) and the
two together (sqrt(se^2 + mc^2)), the error the verdict uses: "within 2 s.e." when |obtained - reference| <= 2 x
that, else the gap. The published values and their provenance are the presets' own `literature` fields, copied
from ../shared/published-figures.md.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "benchmarks" / "results" / "published" / "seeds"
OUT = ROOT / "benchmarks" / "results" / "beside_papers.json"

# (row label, run name prefix, preset, K, data, published key in the preset's `literature`)
ROWS = [
    ("VAE 784-400-40 (Rezende & Mohamed 2015)", "vae_784_400_40_static", "vae_784_400_40_static", 200,
     "static binarized MNIST (Larochelle)", "published_test_nll"),
    ("VAE 784-400-40 (Rezende & Mohamed 2015)", "vae_784_400_40_static", "vae_784_400_40_static", 5000,
     "static binarized MNIST (Larochelle)", None),
    ("VAE 784-400-40, Pythae's MultiStepLR to epoch 1,000", "vae_784_400_40_static_1000",
     "vae_784_400_40_static_1000", 200, "static binarized MNIST (Larochelle)", "published_test_nll"),
    ("VAE 784-400-40, Pythae's MultiStepLR to epoch 1,000", "vae_784_400_40_static_1000",
     "vae_784_400_40_static_1000", 5000, "static binarized MNIST (Larochelle)", None),
    ("VAE k = 1, 1 stochastic layer (Burda et al. 2016, Table 1)", "iwae_vae_1layer", "iwae_vae_1layer", 5000,
     "dynamic MNIST (k/255, 59,600 / 400)", "published_test_nll"),
]


def row(label: str, prefix: str, preset: str, k: int, data: str, key: str | None) -> dict | None:
    """One row's numbers from the per-seed files, or None when no seed has been evaluated at K."""
    files = sorted(SEEDS.glob(f"{prefix}-s*/eval-k{k}.json"))
    if not files:
        return None
    evals = [json.loads(f.read_text()) for f in files]
    nll = [-e["iw_loglik"] for e in evals]
    mc = [e["iw_loglik_mc_stderr"] for e in evals]
    n = len(nll)
    mean = statistics.fmean(nll)
    se = statistics.stdev(nll) / math.sqrt(n) if n > 1 else float("nan")
    mc_mean = math.sqrt(sum(m * m for m in mc)) / n
    both = math.sqrt(se * se + mc_mean * mc_mean)
    lit = yaml.safe_load((ROOT / "src" / "vaelab" / "configs" / "literature" / f"{preset}.yaml").read_text())
    lit = lit["literature"]
    ref = lit.get(key) if key else None
    verdict = "no published figure at this K"
    if ref is not None and n == 1:
        verdict = f"gap {mean - ref:+.2f} nats, 1 seed (no s.e. across seeds yet)"
    elif ref is not None:
        gap = mean - ref
        verdict = f"within 2 s.e. ({gap:+.2f})" if abs(gap) <= 2 * both else f"gap {gap:+.2f} nats (> 2 s.e.)"
    return {"model": label, "data": data, "metric": f"test NLL, K = {k}", "seeds": [e["seed"] for e in evals],
            "per_seed_nll": nll, "mean": mean, "se_seeds": se, "mc_se": mc_mean, "se_both": both,
            "epochs": [e.get("epochs_trained") for e in evals], "reference": ref,
            "source": lit.get("published_source"), "reproduction": lit.get("published_reproduction_nll"),
            "reproduction_source": lit.get("published_reproduction_source"), "verdict": verdict,
            "command": f"python benchmarks/published_runs.py --only '{prefix}-s*' then vaelab evaluate RUN "
                       f"--iw-samples {k}"}


def main() -> int:
    rows = [r for spec in ROWS if (r := row(*spec)) is not None]
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    print("| model | data | metric | obtained (s.e. seeds; MC) | reference | source | verdict |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ref = "–" if r["reference"] is None else f"{r['reference']}"
        if r["reproduction"] is not None:
            ref += f"; Pythae {r['reproduction']}"
        n = len(r["seeds"])
        se = "–" if n == 1 else f"{r['se_seeds']:.2f}"
        print(f"| {r['model']} | {r['data']} | {r['metric']} | {r['mean']:.2f} ({se}; MC {r['mc_se']:.3f}), "
              f"{n} seed{'s' if n > 1 else ''} | {ref} | {r['source'] or '–'} | {r['verdict']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
