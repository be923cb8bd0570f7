"""``cola train-reference`` fails with instructions when the data is missing, and refuses leaked templates."""

from __future__ import annotations

from pathlib import Path

import pytest

from cola_moderation.pipeline.cli import main


def test_missing_dataset_tells_how_to_install(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train-reference", "--data", str(tmp_path / "absent"), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_templates_in_the_eval_config_are_refused(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "leaky.yaml"
    config.write_text('taxonomy:\n  labels: [t_shirt, trouser]\n  templates: ["a photo of a {}."]\n')
    code = main(["train-reference", "--config", str(config), "--output", str(tmp_path / "out")])
    assert code == 2
    assert "training templates" in capsys.readouterr().err
