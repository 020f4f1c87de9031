"""Markdown tables from benchmarks/run_all.sh's runs (benchmarks/runs/) for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/summarize.py > /tmp/tables.md
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

RUNS = Path("benchmarks/runs")


def load(run: Path) -> tuple[dict, list[dict], dict]:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    ev = json.loads((run / "eval.json").read_text()) if (run / "eval.json").is_file() else {}
    return cfg, rows, ev


def f(v, digits=2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |"
                                                                                   for r in rows])


def runs_table(prefix: str, title: str) -> str:
    rows = []
    for run in sorted(RUNS.glob(f"{prefix}*")):
        if not (run / "metrics.jsonl").is_file():
            continue
        cfg, hist, ev = load(run)
        last = hist[-1]
        curve = " → ".join(f"{r['train_elbo']:.1f}" for r in hist)
        rows.append([run.name, cfg["model"]["latent"], cfg["estimator"]["name"], str(sum(r["steps"] for r in hist)),
                     f"{sum(r['seconds'] for r in hist):.0f}", curve, f(last["valid_kl"]), f(ev.get("elbo")),
                     f(ev.get("iw_loglik")), str(ev.get("iw_samples", "–"))])
    head = ["run", "latent", "estimator", "steps", "train s", "train ELBO per epoch", "valid KL (last)",
            "test ELBO", "test IW log-lik.", "K"]
    return f"### {title}\n\n" + table(head, rows)


def gradvar_table(path: Path) -> str:
    if not path.is_file():
        return ""
    r = json.loads(path.read_text())
    rows = [[x["estimator"], str(x["unbiased"]), f"{x['variance']:.3g}", f(x.get("relative_bias"), 3),
             f(x.get("cosine"), 3), f"{1000 * x['seconds_per_draw']:.1f}"] for x in r["rows"]]
    return (f"### Gradient variance at the trained DisARM parameters\n\n{r['reference']}; batch {r['batch']}, "
            f"{r['draws']} draws, {r['n_params']} {r['params']} parameters.\n\n"
            + table(["estimator", "unbiased", "variance (trace)", "relative bias", "cosine", "ms per draw"], rows))


def ae_table() -> str:
    rows = []
    for d in (2, 16):
        for name in (f"ae_{d}_20.json", f"ae_{d}_auto.json"):
            p = RUNS / name
            if p.is_file():
                ev = json.loads(p.read_text())
                rows.append([f"AE {d}-D + GMM", str(ev.get("gmm_components")), f(ev.get("rec")),
                             f(ev.get("iw_loglik")), str(ev.get("iw_samples"))])
        p = RUNS / f"vae_{d}" / "eval.json"
        if p.is_file():
            ev = json.loads(p.read_text())
            rows.append([f"Gaussian VAE {d}-D", "–", f(ev.get("rec")), f(ev.get("iw_loglik")),
                         str(ev.get("iw_samples"))])
    return "### AE + GMM vs Gaussian VAE\n\n" + table(["model", "GMM K", "rec.", "test IW log-lik.", "K"], rows)


if __name__ == "__main__":
    print(runs_table("est_", "Estimators, DisARM paper's nonlinear setting"), end="\n\n")
    print(gradvar_table(Path("benchmarks/results/gradvar_trained/gradvar.json")), end="\n\n")
    print(runs_table("rem_", "The study's remedies, 3 epochs each"), end="\n\n")
    print(ae_table())
