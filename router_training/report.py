"""Report presentation: policy assignments for the standard baselines, Markdown tables and plots."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import policies

COLUMNS = {"accuracy": "VQA acc", "pct_cloud_accuracy": "% of cloud acc", "edge_share": "edge share",
           "mean_latency_s": "latency (ms)", "p95_latency_s": "p95 latency (ms)", "mean_energy_j": "energy (J)",
           "latency_reduction": "latency cut vs cloud", "energy_reduction": "energy cut vs cloud"}
_FMT = {"VQA acc": "{:.4f}", "% of cloud acc": "{:.1f}", "edge share": "{:.3f}", "latency (ms)": "{:.2f}",
        "p95 latency (ms)": "{:.2f}", "energy (J)": "{:.4f}", "latency cut vs cloud": "{:+.1%}",
        "energy cut vs cloud": "{:+.1%}"}


def baseline_assignments(split, models: list[str], tiers: list[str], router_assign: np.ndarray) -> dict:
    """Assignment matrices (n, K) by policy name: all-edge / all-cloud per model, random at the router's
    per-model shares, oracle, and the router (``router_assign``)."""
    out = {f"all-{t} ({m})": policies.make("all", model=k)(split) for k, (m, t) in enumerate(zip(models, tiers))}
    out["random (router's shares)"] = policies.make("random", shares=router_assign.mean(0))(split)
    out["oracle"] = policies.make("oracle")(split)
    out["router"] = router_assign
    return out


def to_frame(rows: dict) -> pd.DataFrame:
    """Policy name -> metric dict as a DataFrame with the report's column names; latencies in ms."""
    df = pd.DataFrame({name: {c: r.get(c, np.nan) for c in COLUMNS} for name, r in rows.items()}).T
    df["mean_latency_s"] *= 1000.0
    df["p95_latency_s"] *= 1000.0
    return df.rename(columns=COLUMNS)


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table of policies with fixed precision per column."""
    head = "| policy | " + " | ".join(df.columns) + " |"
    sep = "|---|" + "---:|" * len(df.columns)
    body = ["| " + name + " | " + " | ".join(_FMT.get(c, "{}").format(v) for c, v in row.items()) + " |"
            for name, row in df.iterrows()]
    return "\n".join([head, sep, *body])


def interval_lines(iv: dict) -> str:
    """Bootstrap intervals ``{key: (point, lo, hi)}`` as one Markdown line."""
    keys = [k for k in ("accuracy", "pct_cloud_accuracy", "edge_share", "mean_latency_s", "mean_energy_j",
                        "latency_reduction", "energy_reduction") if k in iv]
    parts = [f"{k} {iv[k][0]:.4g} [{iv[k][1]:.4g}, {iv[k][2]:.4g}]" for k in keys]
    return "Router, bootstrap 95% intervals over test questions: " + "; ".join(parts) + "."


def routing_markdown(routing: dict, intervals: dict) -> str:
    """APGR (vs cloud share, latency, energy) and CPT per policy; the router's with bootstrap intervals."""
    keys = ["apgr", "apgr_latency", "apgr_energy", "cpt_50", "cpt_80"]
    lines = ["| policy | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
    for name, r in routing.items():
        iv = intervals.get(f"{name}_routing", {})
        cells = [f"{r[k]:.3f}" + (f" [{iv[k][1]:.3f}, {iv[k][2]:.3f}]" if k in iv else "") for k in keys]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PRE_DECISION_EXCLUDED = ("router", "random", "oracle", "oracle_curve", "cascade", "combined")
ORACLE_NOTE = ("oracle: the cheapest correct model per query, one point (its APGR can exceed 1: it beats "
               "all-cloud); oracle_curve: hindsight edge/cloud routing at every cloud share (queries sent to the "
               "cloud in order of what the cloud gains), the best curve any router between these two models "
               "can reach.")


def router_origin(manifest: dict) -> str:
    """Where an exported router's thresholds came from, for the report's first line."""
    if "search" in manifest:
        s = manifest["search"]
        return f"`router-train search` study {s['study']}, trial {s['trial']} (kept until `router-train export`)"
    g = manifest.get("tuning", {}).get("guarantee")
    if g:
        return f"thresholds calibrated by Learn then Test (eps {g['eps']:g}, delta {g['delta']:g})"
    return "thresholds and lambdas tuned by Optuna against the config's `tune` target"


def comparison_lines(routing: dict, router_interval: dict | None = None, paired: dict | None = None) -> str:
    """Plain-language verdicts from the routing table (``evaluate``): the router against the best
    baseline that decides before any model runs (APGR; with ``router_interval``, the router's bootstrap
    intervals ``{key: (point, lo, hi)}``, whether that baseline lies inside the router's 95% interval;
    with ``paired`` (``evaluate.compare_baselines``), the paired bootstrap interval of the difference),
    against the edge-confidence cascade (APGR on the cloud-share and latency axes), and whether router +
    cascade ("combined") beats both on both."""
    if "router" not in routing:
        return ""
    r = routing["router"]
    lines = []
    pre = {k: v for k, v in routing.items() if k not in PRE_DECISION_EXCLUDED}
    if pre:
        best = max(pre, key=lambda k: pre[k]["apgr"])
        verdict = "above" if r["apgr"] > pre[best]["apgr"] else "NOT above"
        inside = ""
        if router_interval and "apgr" in router_interval:
            _, lo, hi = router_interval["apgr"]
            where = "inside" if lo <= pre[best]["apgr"] <= hi else "outside"
            inside = f"; {where} the router's 95% interval [{lo:.3f}, {hi:.3f}]"
        lines.append(f"- Router APGR {r['apgr']:.3f}: {verdict} every baseline that decides before running a model "
                     f"(best: {best} {pre[best]['apgr']:.3f}{inside}).")
        if paired and paired.get("baseline") == best:
            d = {k: paired["difference"][k] for k in ("apgr", "apgr_latency")}
            sig = "excludes 0" if d["apgr"][1] > 0 or d["apgr"][2] < 0 else "includes 0"
            lines.append(f"- Paired bootstrap (same resamples) router minus {best}: APGR {d['apgr'][0]:+.4f} "
                         f"[{d['apgr'][1]:+.4f}, {d['apgr'][2]:+.4f}] ({sig}), latency-axis APGR "
                         f"{d['apgr_latency'][0]:+.4f} [{d['apgr_latency'][1]:+.4f}, {d['apgr_latency'][2]:+.4f}].")
    for name in ("cascade", "combined"):
        if name not in routing:
            continue
        c = routing[name]
        lines.append(f"- {name}: APGR {c['apgr']:.3f} (router {r['apgr']:.3f}), latency-axis APGR "
                     f"{c['apgr_latency']:.3f} (router {r['apgr_latency']:.3f}).")
    if "combined" in routing and "cascade" in routing:
        c, k = routing["combined"], routing["cascade"]
        dom = all(c[a] > max(r[a], k[a]) for a in ("apgr", "apgr_latency"))
        lines.append(f"- Router + cascade (combined) {'dominates' if dom else 'does not dominate'} both the router "
                     "and the cascade on APGR and latency-axis APGR.")
    return "\n".join(lines)


def calibration_markdown(calib: dict) -> str:
    """``metrics.calibration_table`` output as a Markdown table."""
    lines = ["| model | temperature (router-val) | ECE before | ECE after | NLL before | NLL after |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {m} | {c['temperature']:.3f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} | "
              f"{c['nll_before']:.4f} | {c['nll_after']:.4f} |" for m, c in calib.items()]
    return "\n".join(lines)


def guarantee_markdown(check: dict, deployed: dict | None) -> str:
    """``evaluate.guarantee_check`` (and, in guarantee mode, the manifest's calibration record) as text."""
    ok = "holds" if check["violation_rate"] <= check["delta"] else "FAILS"
    lines = []
    if deployed:
        status = (f"certified on {deployed['n']} router-val questions (router-val loss "
                  f"{100 * deployed['val_loss']:.2f} points, p = {deployed['p_value']:.3g})"
                  if deployed["certified"] else "nothing certified: every query goes to the cloud")
        lines += [f"Deployed thresholds: Learn-then-Test at eps = {deployed['eps']:g}, delta = {deployed['delta']:g} "
                  f"({deployed['transform']}), {status}.", ""]
    lines += [f"Check on {check['resplits']} random resplits of {check['pool']} ({check['n_cal']} questions to "
              f"calibrate, {check['n_test']} to test): tolerated loss eps = {check['eps']:g} (VQA accuracy lost "
              f"against all-cloud, i.e. {100 * check['eps']:g} points), delta = {check['delta']:g}, "
              f"{check['transform']} losses; assumes exchangeable samples.",
              "",
              "| rule | violation rate (test loss > eps) | certified share | mean test loss (points) | "
              "mean edge threshold | mean edge share |",
              "|---|---:|---:|---:|---:|---:|",
              f"| Learn then Test | {check['violation_rate']:.3f} ({ok}: <= delta) | {check['certified_rate']:.3f} | "
              f"{100 * check['mean_test_loss']:.2f} | {check['mean_edge_threshold']:.4f} | "
              f"{check.get('mean_edge_share', float('nan')):.3f} |",
              f"| naive (calibration loss <= eps) | {check['naive_violation_rate']:.3f} | - | - | - | - |"]
    return "\n".join(lines)


def bandwidth_markdown(rows: list[dict]) -> str:
    """``evaluate.bandwidth_table`` rows as a Markdown table (latency in ms, energy in J)."""
    lines = ["| uplink (Mbit/s) | router acc | edge share | router latency (ms) | all-cloud latency (ms) | "
             "router energy (J) | all-cloud energy (J) |", "|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['uplink_mbps']:g} | {r['accuracy']:.4f} | {r['edge_share']:.3f} | {1e3 * r['mean_latency_s']:.2f} | "
              f"{1e3 * r['cloud_latency_s']:.2f} | {r['mean_energy_j']:.4f} | {r['cloud_energy_j']:.4f} |" for r in rows]
    shares = [r["edge_share"] for r in rows]
    if rows and max(shares) - min(shares) < 1e-9:
        lines += ["", "The edge share does not move here: between these bandwidths the cloud's predicted cost changes "
                  "too little to outweigh any query's predicted accuracy gap, so the tuned thresholds (which edge "
                  "models are eligible) decide alone, and only the latency and energy of cloud-routed queries change. "
                  "Decisions move with the network where the lambda terms, not the thresholds, separate edge from "
                  "cloud (lower thresholds, or payloads large enough that the uplink dominates the cloud's latency)."]
    return "\n".join(lines)


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


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_plot(path, curves: dict, points: dict, title: str) -> None:
    """PNG with two panels, VQA accuracy against mean latency (ms) and against mean energy (J):
    ``curves`` name -> metric dicts of a sweep (drawn as lines), ``points`` name -> metric dict (markers;
    the oracle and the router stand out)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, scale, label in ((axes[0], "mean_latency_s", 1e3, "mean latency per query (ms)"),
                                  (axes[1], "mean_energy_j", 1.0, "mean device energy per query (J)")):
        for name, ms in curves.items():
            ax.plot([m[key] * scale for m in ms], [m["accuracy"] for m in ms], "-", lw=1.5, label=name)
        markers = iter("osD^v<>phX*")
        for name, m in points.items():
            style = "*" if name == "router" else "P" if name == "oracle" else next(markers)
            ax.plot(m[key] * scale, m["accuracy"], style, ms=12 if name in ("router", "oracle") else 7, label=name)
        ax.set_xlabel(label)
        ax.set_ylabel("VQA accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bandwidth_plot(path, rows: list[dict], profile: str) -> None:
    """PNG: edge share and mean latency (router vs all-cloud) against uplink bandwidth (log axis)."""
    plt = _plt()
    bw = [r["uplink_mbps"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.semilogx(bw, [r["edge_share"] for r in rows], "o-")
    a1.set_ylabel("router edge share")
    a2.semilogx(bw, [1e3 * r["mean_latency_s"] for r in rows], "o-", label="router")
    a2.semilogx(bw, [1e3 * r["cloud_latency_s"] for r in rows], "s--", label="all-cloud")
    a2.set_ylabel("mean latency (ms)")
    a2.legend()
    for a in (a1, a2):
        a.set_xlabel("uplink bandwidth (Mbit/s)")
        a.grid(alpha=0.3)
    fig.suptitle(f"Re-deciding with the current uplink ({profile})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
