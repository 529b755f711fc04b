"""Report presentation: policy assignments for the standard baselines, Markdown tables, plots, and the
plain-language lines at the report's top (``verdict``, ``scorer_line``, ``split_check`` / ``split_lines``,
``configured_costs``, ``left_out_line``). Every function here is pure except the plots (PNG files)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import policies

COLUMNS = {"accuracy": "VQA acc", "pct_cloud_accuracy": "% of cloud acc", "edge_share": "edge share",
           "mean_latency_s": "latency (ms)", "p95_latency_s": "p95 latency (ms)", "mean_energy_j": "energy (J)",
           "latency_reduction": "latency cut vs cloud", "energy_reduction": "energy cut vs cloud"}
_FMT = {"VQA acc": "{:.4f}", "accuracy": "{:.4f}", "% of cloud acc": "{:.1f}", "edge share": "{:.3f}",
        "latency (ms)": "{:.2f}", "p95 latency (ms)": "{:.2f}", "energy (J)": "{:.4f}",
        "latency cut vs cloud": "{:+.1%}", "energy cut vs cloud": "{:+.1%}"}


def baseline_assignments(split, models: list[str], tiers: list[str], router_assign: np.ndarray) -> dict:
    """Assignment matrices (n, K) by policy name: all-edge / all-cloud per model, random at the router's
    per-model shares, oracle, and the router (``router_assign``)."""
    out = {f"all-{t} ({m})": policies.make("all", model=k)(split) for k, (m, t) in enumerate(zip(models, tiers))}
    out["random (router's shares)"] = policies.make("random", shares=router_assign.mean(0))(split)
    out["oracle"] = policies.make("oracle")(split)
    out["router"] = router_assign
    return out


SCORERS = {"vqa": "VQAv2 accuracy, min(#matching human answers / 3, 1) averaged leave-one-out over ten answers",
           "exact": "exact match against a reference answer after light normalisation",
           "mc": "multiple choice (the gold option named by its letter or its text)",
           "numeric": "a number in the answer equals the reference within a relative tolerance",
           "given": "the outcome files' own grades, nothing recomputed"}  # config.SCORERS -> what a score is


def accuracy_label(scorer: str, short: bool = True) -> str:
    """The accuracy column / axis name: "VQA acc" ("VQA accuracy" with ``short`` False) for the vqa
    scorer, else "accuracy"."""
    return ("VQA acc" if short else "VQA accuracy") if scorer == "vqa" else "accuracy"


def scorer_line(scorer: str) -> str:
    """One header line naming the scorer (``cfg.dataset.scorer``) and what a score means."""
    return f"Scorer: `{scorer}` ({SCORERS.get(scorer, 'see the config')}); accuracy is the mean score per question."


def to_frame(rows: dict, scorer: str = "vqa") -> pd.DataFrame:
    """Policy name -> metric dict as a DataFrame with the report's column names (the accuracy column
    ``accuracy_label(scorer)``); latencies in ms."""
    df = pd.DataFrame({name: {c: r.get(c, np.nan) for c in COLUMNS} for name, r in rows.items()}).T
    df["mean_latency_s"] *= 1000.0
    df["p95_latency_s"] *= 1000.0
    return df.rename(columns={**COLUMNS, "accuracy": accuracy_label(scorer)})


def markdown(df: pd.DataFrame, marks: dict | None = None) -> str:
    """A Markdown table of policies with fixed precision per column; ``marks`` (policy name -> set of
    column names, e.g. ``configured_costs``) gets a dagger after those cells."""
    marks = marks or {}
    head = "| policy | " + " | ".join(df.columns) + " |"
    sep = "|---|" + "---:|" * len(df.columns)
    body = ["| " + name + " | " + " | ".join(_FMT.get(c, "{}").format(v) + (" †" if c in marks.get(name, ()) else "")
                                             for c, v in row.items()) + " |" for name, row in df.iterrows()]
    return "\n".join([head, sep, *body])


COST_KEYS = ("mean_latency_s", "p95_latency_s", "mean_energy_j", "latency_reduction", "energy_reduction")


def configured_costs(rows: dict, models: list[dict], cloud: int) -> tuple[dict, str]:
    """Which policy-table cells rest on configured rather than measured compute times. ``rows``: policy
    name -> ``metrics.policy_metrics`` dict (its ``shares`` (K,) in model order); ``models``: the
    manifest's ``models`` (each may carry ``compute_source``: "measured" or "configured: <source>";
    absent = measured); ``cloud`` the all-cloud reference index. Returns (marks for ``markdown``: every
    latency / energy cell of a policy routing any share to a configured model, and the cuts vs cloud of
    every policy when the reference is configured; the footnote line, "" when all are measured)."""
    conf = [k for k, m in enumerate(models) if m.get("compute_source", "measured") != "measured"]
    if not conf:
        return {}, ""
    marks = {}
    for name, r in rows.items():
        keys = COST_KEYS if any(r["shares"][k] > 0 for k in conf) else COST_KEYS[3:] if cloud in conf else ()
        if keys:
            marks[name] = {COLUMNS[k] for k in keys}
    named = "; ".join(f"{models[k]['name']} ({models[k]['compute_source']})" for k in conf)
    return marks, (f"† Compute time configured, not measured: {named}. Cells marked † use it (policies that route "
                   "queries to these models; the cuts vs cloud too when the all-cloud reference is one of them); "
                   "so do the latency and energy axes of the routing curves and plots.")


def left_out_line(left: dict, models: list[str]) -> str:
    """``baselines.confidence_left_out`` (name -> edge model index) as one line, "" when nothing is left out:
    e.g. "cascade and combined left out: edge model X's outcomes carry no confidence"."""
    by_model: dict[int, list[str]] = {}
    for name, k in left.items():
        by_model.setdefault(k, []).append(name)
    return "; ".join(f"{' and '.join(names)} left out: edge model {models[k]}'s outcomes carry no confidence"
                     for k, names in by_model.items()) + ("." if left else "")


ROUTER_SPLITS = ("router-train", "router-val", "router-test")


def split_check(table: pd.DataFrame, info: pd.DataFrame) -> dict | None:
    """Whether any group (``info["group"]``: each sample's ``dataset.split_by`` value) has samples in two
    router splits (the outcome table's ``split`` column; rows of other splits ignored): {"groups": number
    of groups, "straddling": {group: [splits]} sorted by group}; None when ``info`` has no ``group``."""
    if "group" not in info.columns:
        return None
    s = table.loc[table["split"].isin(ROUTER_SPLITS), ["sample_id", "split"]].drop_duplicates()
    per = s.merge(info[["sample_id", "group"]], on="sample_id").groupby("group")["split"].unique()
    return {"groups": int(len(per)), "straddling": {str(g): sorted(v) for g, v in sorted(per.items()) if len(v) > 1}}


def split_lines(split_by: str, check: dict | None, info: pd.DataFrame) -> list[str]:
    """Header lines on the router splits: the split key (``cfg.dataset.split_by``) with ``split_check``'s
    result (a loud warning naming an offending group), and, when there are any, how many of ``info``'s
    questions have an empty text (its bool column ``empty_question``; skipped without it)."""
    line = f"Router splits by `{split_by}`"
    if check is None:
        line += "."
    elif not check["straddling"]:
        line += f": no group in two splits ({check['groups']} groups)."
    else:
        g, where = next(iter(check["straddling"].items()))
        line = (f"**WARNING: {len(check['straddling'])} of {check['groups']} `{split_by}` groups lie in two router "
                f"splits (e.g. {g!r} in {' and '.join(where)}): their questions leak between training and test, so "
                "the figures below may be optimistic.**")
    lines = [line]
    if "empty_question" in info.columns and int(info["empty_question"].sum()):
        k = int(info["empty_question"].sum())
        lines.append(f"{k} of {len(info)} questions have an empty text (the image carries the question).")
    return lines


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


def best_pre_decision(routing: dict) -> str | None:
    """The baseline with the highest APGR among those deciding before any model runs (every routing-table
    entry not in PRE_DECISION_EXCLUDED); None when there is none."""
    pre = [k for k in routing if k not in PRE_DECISION_EXCLUDED]
    return max(pre, key=lambda k: routing[k]["apgr"]) if pre else None


def _iv(t) -> str:
    return f"{t[0]:.3f} (95% interval {t[1]:.3f} to {t[2]:.3f})"


def verdict_data(routing: dict, intervals: dict, paired: dict | None = None, decision: dict | None = None,
                 refs: dict | None = None) -> dict:
    """The verdict's facts (report.json ``verdict``). ``routing``: name -> ``metrics.routing_summary``;
    ``intervals``: "<name>_routing" -> ``metrics.bootstrap_routing`` ({key: (point, lo, hi)}), at least
    the router's; ``paired``: ``evaluate.compare_baselines``' paired difference; ``decision``: the
    manifest's (``target_met``, ``deployed``); ``refs``: ``metrics.references`` of the test split. Keys:
    ``skill`` (bool: the router's APGR interval lies above random routing's 0.5 and the all-cloud model
    is more accurate than the best edge model, else PGR has no gap to measure; None without a router
    sweep), ``gap`` (all-cloud minus best-edge accuracy, with ``refs``), ``router_apgr`` [point, lo, hi],
    ``random_apgr`` 0.5, ``best_baseline`` (name or None), ``best_baseline_apgr`` [point, lo, hi] (NaN
    bounds without its interval), ``difference_apgr`` (router minus it, paired) and ``beats_best_baseline``
    (True: difference interval above 0, False: below 0, None: includes 0 or not computed),
    ``target_met`` (bool), ``deployed`` (sentence or None)."""
    decision = decision or {}
    out: dict = {"skill": None, "random_apgr": 0.5, "best_baseline": None, "beats_best_baseline": None,
                 "target_met": decision.get("target_met", True) is not False, "deployed": decision.get("deployed")}
    iv = intervals.get("router_routing", {}).get("apgr")
    if "router" in routing and iv is not None:
        out["router_apgr"] = [float(v) for v in iv]
        out["skill"] = bool(iv[1] > 0.5)
    if refs is not None:
        out["gap"] = float(refs["acc_cloud"] - refs["acc_edge"])
        out["skill"] = out["skill"] and out["gap"] > 1e-12 if out["skill"] is not None else None
    best = best_pre_decision(routing)
    if best is not None:
        out["best_baseline"] = best
        nan = float("nan")
        out["best_baseline_apgr"] = [float(v) for v in intervals.get(f"{best}_routing", {}).get(
            "apgr", (routing[best]["apgr"], nan, nan))]
        if paired and paired.get("baseline") == best:
            d = [float(v) for v in paired["difference"]["apgr"]]
            out["difference_apgr"] = d
            out["beats_best_baseline"] = True if d[1] > 0 else False if d[2] < 0 else None
    return out


def verdict(routing: dict, intervals: dict, paired: dict | None = None, decision: dict | None = None,
            refs: dict | None = None, models: list[str] | None = None) -> str:
    """The report's top, in plain words (``verdict_data``'s arguments; ``models`` names the best edge
    model of ``refs``): whether the router shows routing skill (its APGR interval above random
    routing's 0.5) and what it means when not, whether it beats the best pre-decision baseline (paired
    interval), and, when the deployed decision missed its target, what was deployed instead."""
    v = verdict_data(routing, intervals, paired, decision, refs)
    lines = []
    if not v["target_met"]:
        lines.append("**The tuned decision did not meet its target.** Deployed: "
                     f"{v['deployed'] or 'see decision in report.json'}. The \"router\" row below is that decision.")
    if v["skill"] is None:
        lines.append("**Verdict: not available**: routing curves need an edge-tier model and the router's sweep.")
        return "\n\n".join(lines)
    a = v["router_apgr"]
    head = (f"The router's APGR (its predicted P(correct) swept from all-edge to all-cloud) is {_iv(a)}; random "
            "routing scores 0.5")
    if v.get("gap", 1.0) <= 1e-12:
        edge = models[refs["best_edge"]] if models else "the best edge model"
        tie = "as accurate as" if abs(v["gap"]) <= 1e-12 else "more accurate than"
        lines.append(f"**Verdict: no evidence of routing skill over random on this data.** On router-test {edge} "
                     f"({refs['acc_edge']:.4f}) is {tie} all-cloud ({refs['acc_cloud']:.4f}): there is no accuracy gap "
                     f"for routing to recover, so APGR ({a[0]:.3f}) does not measure skill here: all-edge already "
                     f"{'matches' if tie.startswith('as') else 'beats'} all-cloud's accuracy.")
    elif v["skill"]:
        lines.append(f"**Verdict: routing skill detected.** {head}, below the whole interval: the queries it sends to "
                     "the cloud gain more from the cloud than randomly chosen ones at the same cloud share.")
    else:
        where = "lies below" if a[2] < 0.5 else "includes"
        worse = " (worse than random)" if a[2] < 0.5 else ""
        lines.append(f"**Verdict: no evidence of routing skill over random on this data.** {head}, which the interval "
                     f"{where}. Its decisions are no better than random{worse} at the same cloud share: sending the "
                     "same fraction of randomly chosen queries to the cloud does as well, so any saving in the tables "
                     "below comes from sending fewer queries to the cloud, not from choosing which ones.")
    b = v["best_baseline"]
    if b is None:
        lines.append("No baseline was fitted, so none is compared.")
    elif "difference_apgr" in v:
        d = v["difference_apgr"]
        what = {True: "the router beats it", False: "it beats the router",
                None: "no evidence that either is better"}[v["beats_best_baseline"]]
        lines.append(f"Best baseline that decides before running a model: {b}, APGR {_iv(v['best_baseline_apgr'])}. "
                     f"Router minus {b} on the same resamples: {d[0]:+.3f} (95% interval {d[1]:+.3f} to {d[2]:+.3f}): "
                     f"{what}.")
    else:
        lines.append(f"Best baseline that decides before running a model: {b}, APGR {v['best_baseline_apgr'][0]:.3f} "
                     f"(router {a[0]:.3f}); no paired interval was computed.")
    return "\n\n".join(lines)
ORACLE_NOTE = ("oracle: the cheapest correct model per query, one point (its APGR can exceed 1: it beats "
               "all-cloud); oracle_curve: hindsight edge/cloud routing at every cloud share (queries sent to the "
               "cloud in order of what the cloud gains), the best curve any router between these two models "
               "can reach.")


def router_origin(manifest) -> str:
    """Where an exported router's thresholds came from (a ``core.manifest.Manifest``), for the report's
    first line."""
    if manifest.search:
        s = manifest.search
        return f"`router-train search` study {s['study']}, trial {s['trial']} (kept until `router-train export`)"
    g = manifest.tuning.get("guarantee")
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
    best = best_pre_decision(routing)
    if best is not None:
        b = routing[best]["apgr"]
        verdict = "above" if r["apgr"] > b else "NOT above"
        inside = ""
        if router_interval and "apgr" in router_interval:
            _, lo, hi = router_interval["apgr"]
            inside = f"; {'inside' if lo <= b <= hi else 'outside'} the router's 95% interval [{lo:.3f}, {hi:.3f}]"
        lines.append(f"- Router APGR {r['apgr']:.3f}: {verdict} every baseline that decides before running a model "
                     f"(best: {best} {b:.3f}{inside}).")
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


def guarantee_markdown(check: dict, deployed: dict | None, scorer: str = "vqa") -> str:
    """``evaluate.guarantee_check`` (and, in guarantee mode, the manifest's calibration record) as text;
    ``scorer`` names the accuracy (``accuracy_label``)."""
    ok = "holds" if check["violation_rate"] <= check["delta"] else "FAILS"
    lines = []
    if deployed:
        status = (f"certified on {deployed['n']} router-val questions (router-val loss "
                  f"{100 * deployed['val_loss']:.2f} points, p = {deployed['p_value']:.3g})"
                  if deployed["certified"] else "nothing certified: every query goes to the cloud")
        lines += [f"Deployed thresholds: Learn-then-Test at eps = {deployed['eps']:g}, delta = {deployed['delta']:g} "
                  f"({deployed['transform']}), {status}.", ""]
    lines += [f"Check on {check['resplits']} random resplits of {check['pool']} ({check['n_cal']} questions to "
              f"calibrate, {check['n_test']} to test): tolerated loss eps = {check['eps']:g} ({accuracy_label(scorer, False)} lost "
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
    if "deployed_violation_rate" in check:  # the exported thresholds themselves, fixed, on the same halves
        lines.append(f"| deployed thresholds (fixed; loss > {100 * check['deployed_eps']:.2f} points, its target) | "
                     f"{check['deployed_violation_rate']:.3f} | - | {100 * check['deployed_mean_loss']:.2f} | - | "
                     f"{check['deployed_edge_share']:.3f} |")
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
                  "cloud (lower thresholds, or payloads large enough that the uplink dominates the cloud's latency), "
                  "and with a latency budget (`tune: {max_latency_s: ...}`), whose thresholds are tuned per uplink."]
    return "\n".join(lines)


def accuracy_by_degradation(table: pd.DataFrame, info: pd.DataFrame, models: list[str],
                            severity: tuple[float, float]) -> pd.DataFrame:
    """Mean score per model (columns) by degradation kind and severity band (rows: the config's
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


def pareto_plot(path, curves: dict, points: dict, title: str, ylabel: str = "VQA accuracy") -> None:
    """PNG with two panels, accuracy (axis ``ylabel``) against mean latency (ms) and mean energy (J):
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
        ax.set_ylabel(ylabel)
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


def ood_markdown(ood: dict) -> str:
    """``evaluate.ood_summary`` as text: the score's quantiles on router-test and what the limit flags."""
    q = ood["quantiles"]
    line = (f"On router-test the score's median is {q[50]:.4f}, 90th percentile {q[90]:.4f}, 99th {q[99]:.4f}, "
            f"maximum {ood['max']:.4f} (0: every feature inside router-train's range).")
    if ood["limit"] is None:
        return line + " The artifact sets no limit."
    return (line + f" The artifact's limit is {ood['limit']:.4f} (router-val's 99th percentile unless set): "
            f"{100 * ood['flagged']:.1f}% of router-test questions lie above it; policy `{ood['policy']}` "
            "(`route`: decide as usual and flag; `cloud`: send flagged queries to the cloud; set with "
            "`Router.ood_policy` / `router-train route --ood-policy`).")
