"""The ``cola eval`` report: a JSON document (schema below) and an optional PNG of accuracy vs eps per method.

Schema ``cola-eval/1`` (all accuracies and rates are fractions in [0, 1]; eps keys are labels like ``4/255``)::

    schema         "cola-eval/1"
    command        the argv of the run (or null)
    config         {path, method, cola: {...}, detector: {...}}   the config sections the run used
    model          {path, family, device, dtype, image_size, embed_dim, logit_scale[, logit_bias]}
    dataset        {name, images, image_size, per_class: {label: n}, skipped: {reason: n}}
    attack         {name, threat_model ("gray-box" | "adaptive" | null), target ("clip" | "cola" | null),
                    loss, norm "linf", eps: [float], eps_labels: [str], steps, step_size (null: 2.5 eps / steps),
                    random_start true, eot_samples, seed}
    methods        {method: description}
    accuracy       {method: {"clean": acc, eps_label: robust acc, ...}}
    n              number of images behind every accuracy
    accuracy_ci95  {method: {"clean" | eps_label: [low, high]}}   95% Wilson interval of each accuracy
    rounding       how adversarial copies were quantised before scoring (8 bits)
    target_fooled  {eps_label: share of attacked copies the attacked model misclassifies}
    cascade_escalated {"clean" | eps_label: share of images the cascade sent to COLA}
    detection      {fpr: 0.05, threshold, by_eps: {eps_label: {method: {auroc, tpr_at_5pct_fpr, flagged_clean,
                    flagged_attacked}}}}   method in clip, cola, cascade (each has its own detector score)
    timings        {total_s, clean_scoring_s, threads, by_eps: {eps_label: {attack_s, scoring_s}}}
    versions       {python, torch, transformers, numpy, cola_git}

Two runs of the same command on the same machine give identical ``accuracy``, ``target_fooled``,
``cascade_escalated`` and ``detection``; ``timings`` differ.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from cola_moderation.pipeline.research.attack_registry import EVAL_ATTACKS
from cola_moderation.pipeline.research.evaluation.harness import (
    DETECTION_FPR,
    METHOD_DESCRIPTIONS,
    EvalResult,
    eps_label,
)
from cola_moderation.pipeline.research.evaluation.metrics import wilson_interval

SCHEMA = "cola-eval/1"



def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for package, key in (("torch", "torch"), ("transformers", "transformers"), ("numpy", "numpy")):
        try:
            found[key] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[key] = None
    try:
        found["cola_git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           check=True, cwd=Path(__file__).resolve().parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found["cola_git"] = None
    return found


def _clean(value: float) -> float | None:
    """JSON has no NaN: undefined metrics become null."""
    return None if math.isnan(value) else round(value, 6)


ROUNDING = "adversarial copies are rounded to 8 bits (multiples of 1/255) before they are scored"


def _interval(value: float, n: int) -> list[float | None]:
    if math.isnan(value) or n <= 0:
        return [None, None]
    low, high = wilson_interval(round(value * n), n)
    return [round(low, 6), round(high, 6)]


def build_report(result: EvalResult, *, config: dict[str, Any], model: dict[str, Any], dataset: dict[str, Any],
                 command: list[str] | None = None) -> dict[str, Any]:
    spec = result.spec
    labels = list(result.results)
    n = int(dataset.get("images", 0))
    attacked = [label for label in labels if label != "clean"]
    return {
        "schema": SCHEMA,
        "command": command,
        "config": config,
        "model": model,
        "dataset": dataset,
        "attack": {"name": spec.name, "threat_model": spec.threat_model, "target": EVAL_ATTACKS[spec.name].target,
                   "loss": EVAL_ATTACKS[spec.name].loss, "norm": "linf", "eps": [float(e) for e in spec.attacked_eps],
                   "eps_labels": [eps_label(e) for e in spec.attacked_eps], "steps": spec.steps,
                   "step_size": spec.step_size, "random_start": True,
                   "eot_samples": spec.eot_samples if spec.name == "eot-pgd" else None, "seed": spec.seed},
        "methods": {m: METHOD_DESCRIPTIONS[m] for m in result.methods},
        "accuracy": {m: {label: _clean(result.results[label].accuracy[m]) for label in labels}
                     for m in result.methods},
        "n": n,
        "accuracy_ci95": {m: {label: _interval(result.results[label].accuracy[m], n) for label in labels}
                          for m in result.methods},
        "rounding": ROUNDING,
        "target_fooled": {label: _clean(result.results[label].target_fooled or 0.0) for label in attacked},
        "cascade_escalated": {label: _clean(result.results[label].escalated) for label in labels},
        "detection": {"fpr": DETECTION_FPR, "threshold": result.threshold,
                      "by_eps": {label: {m: {k: _clean(v) for k, v in metrics.items()}
                                         for m, metrics in result.detection[label].items()} for label in attacked}},
        "timings": {"total_s": round(result.total_seconds, 2),
                    "clean_scoring_s": round(result.results["clean"].scoring_seconds, 2),
                    "threads": torch.get_num_threads(),
                    "by_eps": {label: {"attack_s": round(result.results[label].attack_seconds, 2),
                                       "scoring_s": round(result.results[label].scoring_seconds, 2)}
                               for label in attacked}},
        "versions": versions(),
    }


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


def markdown_table(report: dict[str, Any]) -> str:
    """Accuracy (%) per method and eps, as a Markdown table (the format of docs/robustness/README.md)."""
    accuracy = report["accuracy"]
    columns = list(next(iter(accuracy.values())))
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for method, values in accuracy.items():
        cells = ["-" if values[c] is None else f"{100 * values[c]:.1f}" for c in columns]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def require_plotting() -> None:
    """Raise :class:`MissingDependencyError` with the install command when matplotlib (the ``eval`` extra) is
    missing."""
    if importlib.util.find_spec("matplotlib") is None:
        from cola_moderation.operators.errors import MissingDependencyError

        raise MissingDependencyError("--plot needs matplotlib: pip install 'cola-moderation[eval]'")


def plot_accuracy(reports: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs eps (in 1/255 units), one line per method and attack, clean at eps 0. Needs matplotlib."""
    require_plotting()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    styles = ["-", "--", ":", "-."]
    for index, report in enumerate(reports):
        attack = report["attack"]
        xs = [0.0] + [255 * e for e in attack["eps"]]
        for method, values in report["accuracy"].items():
            ys = [values["clean"], *(values[label] for label in attack["eps_labels"])]
            name = method if len(reports) == 1 else f"{method} ({attack['name']})"
            axes.plot(xs, [100 * (y if y is not None else math.nan) for y in ys], styles[index % len(styles)],
                      marker="o", markersize=3, label=name)
    first = reports[0]
    axes.set_xlabel("L-inf eps (x 1/255)")
    axes.set_ylabel("accuracy (%)")
    threat = ", ".join(sorted({f"{r['attack']['name']} ({r['attack']['threat_model']})" for r in reports}))
    axes.set_title(f"{first['model']['path']} on {first['dataset']['name']} ({first['dataset']['images']} images)\n"
                   f"{threat}, {first['attack']['steps']} steps", fontsize=9)
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


SUITE_SCHEMA = "cola-eval/2"
"""Reports of the adaptive suite (``--attack apgd-ce|apgd-dlr|adaptive``): the keys of ``cola-eval/1`` that apply
(``command``, ``config``, ``model``, ``dataset``, ``accuracy`` = per-image worst case, ``n``, ``accuracy_ci95``,
``rounding``, ``versions``) plus ``suite`` (per eps: ``worst_case`` and ``cascade_correct_or_flagged`` as
``{value, n, ci95}``, and one row per attack with its target, how many images it attacked and broke, and the
accuracy after it) and ``data`` (which slices were used for what)."""


def build_suite_report(suite: dict[str, Any], *, config: dict[str, Any], model: dict[str, Any],
                       dataset: dict[str, Any], data: dict[str, Any],
                       command: list[str] | None = None) -> dict[str, Any]:
    by_eps = suite["by_eps"]
    methods = list(suite["clean"])
    accuracy = {m: {"clean": suite["clean"][m]["value"], **{e: by_eps[e]["worst_case"][m]["value"] for e in by_eps}}
                for m in methods}
    intervals = {m: {"clean": suite["clean"][m]["ci95"], **{e: by_eps[e]["worst_case"][m]["ci95"] for e in by_eps}}
                 for m in methods}
    return {
        "schema": SUITE_SCHEMA,
        "command": command,
        "config": config,
        "model": model,
        "dataset": dataset,
        "data": data,
        "attack": {"name": suite["name"],
                   "threat_model": "detector-aware" if suite["name"] == "detector-aware" else "adaptive",
                   "norm": "linf",
                   "eps_labels": list(by_eps), "eps": [_eps_value(e) for e in by_eps]},
        "methods": {m: METHOD_DESCRIPTIONS[m] for m in methods},
        "accuracy": accuracy,
        "n": int(dataset.get("images", 0)),
        "accuracy_ci95": intervals,
        "rounding": ROUNDING,
        "suite": suite,
        "timings": {"total_s": suite["total_s"], "threads": torch.get_num_threads(),
                    "by_eps": {e: by_eps[e]["seconds"] for e in by_eps}},
        "versions": versions(),
    }


def _eps_value(label: str) -> float:
    numerator, _, denominator = label.partition("/")
    return float(numerator) / float(denominator or 1)


def suite_markdown(report: dict[str, Any]) -> str:
    """Worst-case accuracy (%) with 95% CI per method and eps, plus the cascade's correct-or-flagged."""
    suite = report["suite"]
    columns = ["clean", *suite["by_eps"]]

    def cell(entry: dict[str, Any]) -> str:
        low, high = entry["ci95"]
        return f"{100 * entry['value']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"

    lines = [f"N = {report['n']} ({report['dataset']['name']} {report['dataset'].get('slice', '')}); worst case "
             "over the suite, 95% Wilson CI", "| method | " + " | ".join(columns) + " |",
             "|---" * (len(columns) + 1) + "|"]
    for method in suite["clean"]:
        cells = [cell(suite["clean"][method]), *(cell(suite["by_eps"][e]["worst_case"][method])
                                                  for e in suite["by_eps"])]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    cof = [cell(suite["cascade_clean_correct_or_flagged"]),
           *(cell(suite["by_eps"][e]["cascade_correct_or_flagged"]) for e in suite["by_eps"])]
    lines.append("| cascade correct-or-flagged | " + " | ".join(cof) + " |")
    flagged = suite["clean_flagged"]["cascade"]
    lines.append(f"cascade clean flagged: {cell(flagged)} (threshold {suite['detector_threshold']})")
    return "\n".join(lines)


def _merge_rates(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Pool ``{value, n, ci95}`` rates measured on disjoint image sets (counts add; the interval is recomputed)."""
    total = sum(int(e["n"]) for e in entries)
    hits = sum(round(float(e["value"]) * int(e["n"])) for e in entries)
    low, high = wilson_interval(hits, total)
    return {"value": round(hits / total, 6) if total else None, "n": total, "ci95": [round(low, 6), round(high, 6)]}


def merge_suite_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``cola-eval/2`` report from runs of the same suite on consecutive slices of one dataset (shards run in
    parallel): rates pool their counts, attack rows add their image counts and seconds. The slices must touch."""
    if not reports:
        raise ValueError("merge_suite_reports: no reports")
    reports = sorted(reports, key=lambda r: int(r["dataset"]["slice"].strip("[]").split(":")[0]))
    bounds = [tuple(int(v) for v in r["dataset"]["slice"].strip("[]").split(":")) for r in reports]
    for (_, stop), (start, _) in itertools.pairwise(bounds):
        if stop != start:
            raise ValueError(f"merge_suite_reports: slices {bounds} are not consecutive")
    first = reports[0]
    suites = [r["suite"] for r in reports]
    suite = dict(first["suite"])
    for key in ("clean", "clean_flagged"):
        suite[key] = {m: _merge_rates([s[key][m] for s in suites]) for m in first["suite"][key]}
    suite["cascade_clean_correct_or_flagged"] = _merge_rates([s["cascade_clean_correct_or_flagged"] for s in suites])
    by_eps: dict[str, Any] = {}
    for label, entry in first["suite"]["by_eps"].items():
        parts = [s["by_eps"][label] for s in suites]
        rows = []
        for index, row in enumerate(entry["attacks"]):
            merged = dict(row)
            for key in ("attacked", "broken"):
                merged[key] = sum(int(p["attacks"][index][key]) for p in parts)
            merged["seconds"] = round(sum(float(p["attacks"][index]["seconds"]) for p in parts), 1)
            for key in ("accuracy_after", "accuracy", "correct_or_flagged", "correct_or_flagged_after"):
                if key in row:
                    merged[key] = _merge_rates([p["attacks"][index][key] for p in parts])
            rows.append(merged)
        by_eps[label] = {"worst_case": {m: _merge_rates([p["worst_case"][m] for p in parts])
                                        for m in entry["worst_case"]},
                         "cascade_correct_or_flagged": _merge_rates([p["cascade_correct_or_flagged"] for p in parts]),
                         "attacks": rows, "seconds": round(sum(float(p["seconds"]) for p in parts), 1)}
    suite["by_eps"] = by_eps
    suite["total_s"] = round(sum(float(s["total_s"]) for s in suites), 1)
    dataset = dict(first["dataset"])
    dataset["slice"] = f"[{bounds[0][0]}:{bounds[-1][1]}]"
    dataset["images"] = sum(int(r["dataset"]["images"]) for r in reports)
    dataset["per_class"] = {}
    for r in reports:
        for label, count in r["dataset"]["per_class"].items():
            dataset["per_class"][label] = dataset["per_class"].get(label, 0) + count
    data = dict(first.get("data", {}))
    data["reported"] = f"{dataset['name']} {dataset['slice']}"
    data["shards"] = [r["dataset"]["slice"] for r in reports]
    merged = build_suite_report(suite, config=first["config"], model=first["model"], dataset=dataset, data=data,
                                command=first["command"])
    merged["timings"]["shards_wall_s"] = [r["timings"]["total_s"] for r in reports]
    merged["versions"] = first["versions"]
    return merged
