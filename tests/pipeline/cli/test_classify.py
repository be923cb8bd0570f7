from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cola_moderation.pipeline.cli import main


@pytest.fixture()
def tiny_config(tiny_model_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(f"model: {{path: {tiny_model_dir}, device: cpu}}\n"
                    "taxonomy: {labels: [cat, dog, car], templates: ['a photo of a {}.'], top_k: 2}\n")
    return path


def write_images(directory: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    paths = [directory / "photo.jpg", directory / "logo.png", directory / "gray.png", directory / "broken.jpg"]
    rgb.save(paths[0], "JPEG")
    rgb.convert("RGBA").save(paths[1], "PNG")
    rgb.convert("L").save(paths[2], "PNG")
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG")
    paths[3].write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    return paths


def test_classify_three_results_and_one_error_line(tiny_config: Path, tmp_path: Path) -> None:
    paths = write_images(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "cola_moderation.pipeline.cli", "classify", "--config", str(tiny_config),
         *map(str, paths)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in paths]
    for line in lines[:3]:
        assert line["label"] in {"cat", "dog", "car"}
        assert 0 < line["score"] <= 1
        assert line["topk"][0]["label"] == line["label"] and len(line["topk"]) == 2
    assert set(lines[3]) == {"path", "error", "error_class"}
    assert "truncated" in lines[3]["error"]


def test_classify_all_good_exits_zero(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_images(tmp_path)[:2]
    assert main(["classify", "--config", str(tiny_config), *map(str, paths)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_missing_file_is_an_error_line(tiny_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["classify", "--config", str(tiny_config), str(tmp_path / "nope.png")]) == 1
    line = json.loads(capsys.readouterr().out)
    assert "cannot read" in line["error"]


def test_bad_config_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.yaml").write_text("taxonomy: {labels: [a, b]}\nmodel: {devcie: cpu}\n")
    assert main(["classify", "--config", str(tmp_path / "bad.yaml"), "x.png"]) == 2
    err = capsys.readouterr().err
    assert "model.devcie: unknown key" in err and "Traceback" not in err


def test_help_lists_subcommands() -> None:
    result = subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "classify" in result.stdout


@pytest.mark.parametrize("method", ["clip", "cola", "cascade"])
def test_classify_method_flag_and_detector_fields(tiny_config: Path, tmp_path: Path, method: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    paths = write_images(tmp_path)[:2]
    assert main(["classify", "--config", str(tiny_config), "--method", method, *map(str, paths)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for line in lines:
        assert line["method"] == method
        assert 0.0 <= line["adversarial_score"] <= 1.0
        assert isinstance(line["suspected_adversarial"], bool)
