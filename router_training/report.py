"""Report: the router against all-edge, all-cloud, random and the oracle, as tables and plots."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from . import policies

COLUMNS = {"accuracy": "VQA acc", "pct_cloud_accuracy": "% of cloud acc", "edge_share": "edge share",
           "mean_latency_s": "latency (ms)", "mean_energy_j": "energy (J)",
           "latency_reduction": "latency cut vs cloud", "energy_reduction": "energy cut vs cloud"}


def baseline_table(split, models: list[str], tiers: list[str], cloud: int, router_assign: np.ndarray) -> dict:
    """Metrics (``policies.metrics``) per policy name: all-edge and all-cloud per model, random at the
    router's per-model shares, oracle, router. ``router_assign`` (n, K) is the router's assignment."""
    rows = {}
    for k, (m, t) in enumerate(zip(models, tiers)):
        rows[f"all-{t} ({m})"] = policies.metrics(policies.make("all", model=k)(split), split, tiers, cloud)
    shares = router_assign.mean(0)
    rows["random (router's shares)"] = policies.metrics(policies.make("random", shares=shares)(split), split, tiers, cloud)
    rows["oracle"] = policies.metrics(policies.make("oracle")(split), split, tiers, cloud)
    rows["router"] = policies.metrics(router_assign, split, tiers, cloud)
    return rows


def to_frame(rows: dict) -> pd.DataFrame:
    df = pd.DataFrame({name: {c: r[c] for c in COLUMNS} for name, r in rows.items()}).T
    df["mean_latency_s"] *= 1000.0
    return df.rename(columns=COLUMNS)


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table with fixed precision (no extra dependency)."""
    fmt = {"VQA acc": "{:.4f}", "% of cloud acc": "{:.1f}", "edge share": "{:.3f}", "latency (ms)": "{:.2f}",
           "energy (J)": "{:.4f}", "latency cut vs cloud": "{:+.1%}", "energy cut vs cloud": "{:+.1%}"}
    head = "| policy | " + " | ".join(df.columns) + " |"
    sep = "|---|" + "---:|" * len(df.columns)
    body = ["| " + name + " | " + " | ".join(fmt.get(c, "{}").format(v) for c, v in row.items()) + " |"
            for name, row in df.iterrows()]
    return "\n".join([head, sep, *body])


def accuracy_by_degradation(table: pd.DataFrame, info: pd.DataFrame, models: list[str],
                            severity: tuple[float, float]) -> pd.DataFrame:
    """Mean VQA score per model (columns) by degradation kind and severity band (rows: the config's
    severity range in thirds), with question counts. ``info`` has sample_id, degradation, severity."""
    df = table.merge(info, on="sample_id")
    lo, hi = severity
    edges = np.linspace(lo, hi, 4)
    labels = [f"{a:.2f}-{b:.2f}" for a, b in zip(edges[:-1], edges[1:])]
    df["severity"] = np.where(df["degradation"] == "clean", "-",
                              pd.cut(df["severity"], edges, labels=labels, include_lowest=True).astype(str))
    keys = ["degradation", "severity"]
    out = df.pivot_table(index=keys, columns="model", values="score", aggfunc="mean")[models]
    out["n questions"] = df[df["model"] == models[0]].groupby(keys).size()
    return out.reset_index()


def sweep_plot(path: Path, curves: dict, points: dict, title: str) -> None:
    """PNG of VQA accuracy against mean latency (ms): ``curves`` name -> list of metric dicts (a
    threshold sweep), ``points`` name -> metric dict (baselines)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, ms in curves.items():
        ax.plot([m["mean_latency_s"] * 1e3 for m in ms], [m["accuracy"] for m in ms], "-", lw=1.5, label=name)
    markers = iter("osD^v*Xph")
    for name, m in points.items():
        ax.plot(m["mean_latency_s"] * 1e3, m["accuracy"], next(markers), ms=9 if name == "router" else 7, label=name)
    ax.set_xlabel("mean latency per query (ms)")
    ax.set_ylabel("VQA accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(out_dir: Path, rows: dict, by_degradation: pd.DataFrame, extra: dict) -> str:
    """Save report.md and report.json in ``out_dir``; returns the Markdown table of policies."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown(to_frame(rows))
    md = ["# Router report (router-test)", "", table, "",
          "## Reference-model accuracy by degradation (router-test)", "",
          by_degradation.round(3).to_markdown(index=False), ""]
    (out_dir / "report.md").write_text("\n".join(md))
    (out_dir / "report.json").write_text(json.dumps({"policies": rows, **extra}, indent=2, default=float))
    return table

