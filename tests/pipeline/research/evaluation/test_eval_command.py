from __future__ import annotations

import json
from pathlib import Path

import pytest

from cola_moderation.pipeline.cli import main

REPO = Path(__file__).resolve().parents[4]


def test_eval_writes_report_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path, plot_path = tmp_path / "r.json", tmp_path / "r.png"
    code = main(["eval", "--config", str(REPO / "configs" / "reference.yaml"), "--dataset",
                 str(REPO / "samples" / "sample.parquet"), "--attack", "pgd", "--eps", "2/255,8/255", "--steps", "3",
                 "--limit", "16", "--report", str(report_path), "--plot", str(plot_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["schema"] == "cola-eval/1"
    assert report["attack"]["eps_labels"] == ["2/255", "8/255"] and report["attack"]["threat_model"] == "gray-box"
    assert report["dataset"]["images"] == 16 and report["dataset"]["skipped"]["no_label"] == 4
    assert set(report["accuracy"]) == {"clip", "cola", "cascade", "views_only", "projection_only", "ot_only"}
    assert set(report["accuracy"]["clip"]) == {"clean", "2/255", "8/255"}
    assert set(report["detection"]["by_eps"]["8/255"]["cola"]) == {"auroc", "tpr_at_5pct_fpr", "flagged_clean",
                                                                     "flagged_attacked"}
    assert report["model"]["image_size"] == 28 and report["versions"]["torch"]
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| clip |" in capsys.readouterr().out


def test_eval_rejects_bad_eps_and_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["eval", "--config", str(REPO / "configs" / "reference.yaml"), "--report", str(tmp_path / "r.json")]
    assert main([*base, "--dataset", "fashion-mnist", "--eps", "four"]) == 2
    assert "--eps" in capsys.readouterr().err
    assert main([*base, "--dataset", str(tmp_path / "missing.parquet")]) == 2
    assert "missing.parquet" in capsys.readouterr().err


def test_eval_adaptive_suite_reports_worst_case_with_intervals(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "suite.json"
    code = main(["eval", "--config", str(REPO / "configs" / "reference.yaml"), "--dataset",
                 str(REPO / "samples" / "sample.parquet"), "--attack", "adaptive", "--eps", "4/255,8/255",
                 "--apgd-steps", "3", "--pgd-steps", "2", "--detector-aware-steps", "3", "--attacker-seed", "7",
                 "--limit", "6", "--threads", "1", "--report", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["schema"] == "cola-eval/2" and report["n"] == 6 and "8 bits" in report["rounding"]
    assert report["dataset"]["slice"] == "[0:6]" and report["data"]["reported"].endswith("[0:6]")
    suite = report["suite"]
    rows = suite["by_eps"]["8/255"]["attacks"]
    assert {(r["attack"], r["target"]) for r in rows} >= {("apgd-ce", "clip"), ("apgd-dlr", "cola"),
                                                          ("pgd-cw", "cascade"), ("detector-aware", "cascade"),
                                                          ("detector-aware:seed=7", "cascade")}
    for eps in ("4/255", "8/255"):
        for method in ("clip", "cola", "cascade"):
            entry = suite["by_eps"][eps]["worst_case"][method]
            low, high = entry["ci95"]
            assert entry["n"] == 6 and low <= entry["value"] <= high
            # the worst case over the suite is never above clean accuracy
            assert entry["value"] <= suite["clean"][method]["value"]
            assert report["accuracy"][method][eps] == entry["value"]
    # copies found at 4/255 lie in the 8/255 ball too
    for method in ("clip", "cola", "cascade"):
        assert report["accuracy"][method]["8/255"] <= report["accuracy"][method]["4/255"]
    assert "correct-or-flagged" in capsys.readouterr().out
