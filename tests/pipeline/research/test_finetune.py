"""``cola finetune`` on a tiny random CLIP and a few images: TeCoA and FARE end to end, byte-identical text tower and
tokenizer, deterministic ``--resume``, and one-line errors (exit 2) for unusable datasets."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from cola_moderation.operators.backbones.registry import load_backbone
from cola_moderation.operators.backbones.transformers_clip import COPIED_FILES
from cola_moderation.operators.backbones.transformers_clip import IMAGE_TOWER_PREFIXES as TRAINED_PREFIXES
from cola_moderation.operators.config import ModelConfig
from cola_moderation.pipeline.cli import main


def _png(seed: int, bright: bool) -> bytes:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 128, (32, 32, 3), generator=generator, dtype=torch.uint8) + (127 if bright else 0)
    buffer = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


def _parquet(path: Path, count: int, *, labels: list[str] | None) -> Path:
    columns: dict[str, list[object]] = {"id": [str(i) for i in range(count)],
                                        "image": [_png(i, i % 2 == 0) for i in range(count)]}
    if labels is not None:
        columns["label"] = [labels[i % len(labels)] for i in range(count)]
    pq.write_table(pa.table(columns), path)
    return path


@pytest.fixture()
def setup(tmp_path: Path, tiny_model_dir: Path) -> dict[str, Path]:
    config = tmp_path / "tiny.yaml"
    config.write_text(f"model:\n  path: {tiny_model_dir}\n  device: cpu\n"
                      "taxonomy:\n  labels: [bright, dark]\n  templates: ['a {{}} picture.', 'a photo, {{}}.']\n")
    return {"config": config, "model": tiny_model_dir,
            "labelled": _parquet(tmp_path / "labelled.parquet", 24, labels=["bright", "dark"]),
            "unlabelled": _parquet(tmp_path / "unlabelled.parquet", 24, labels=None)}


def _finetune(setup: dict[str, Path], output: Path, *extra: str, method: str = "tecoa",
              dataset: str = "labelled") -> int:
    return main(["finetune", "--config", str(setup["config"]), "--dataset", str(setup[dataset]), "--method", method,
                 "--eps", "8/255", "--steps", "2", "--epochs", "2", "--batch-size", "8", "--validation-split", "0.25",
                 "--threads", "1", "--no-progress", "--output", str(output), *extra])


def _tensors(directory: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict


def _summary(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _without_time(summary: dict[str, object]) -> list[dict[str, object]]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in summary["history"]]  # type: ignore[attr-defined]


def test_tecoa_trains_only_the_image_tower(setup: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "tecoa"
    assert _finetune(setup, output) == 0
    summary = _summary(capsys)
    assert summary["method"] == "tecoa" and summary["validation_images"] == 6 and summary["train_images"] == 18
    assert summary["selected_epoch"] in (1, 2) and len(summary["history"]) == 2  # type: ignore[arg-type]
    assert 0 <= summary["validation_robust_accuracy"] <= summary["validation_clean_accuracy"] <= 1  # type: ignore[operator]

    base, tuned = _tensors(setup["model"]), _tensors(output)
    assert base.keys() == tuned.keys()
    frozen = [k for k in base if not k.startswith(TRAINED_PREFIXES)]
    assert any(k.startswith("text_model.") for k in frozen) and "logit_scale" in frozen
    for key in frozen:  # the text tower and the logit scale come back bit for bit, in the base dtype
        assert base[key].dtype == tuned[key].dtype
        assert base[key].numpy().tobytes() == tuned[key].numpy().tobytes(), key
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith(TRAINED_PREFIXES))
    for name in COPIED_FILES:
        if (setup["model"] / name).exists():
            assert (output / name).read_bytes() == (setup["model"] / name).read_bytes(), name

    card = (output / "README.md").read_text()
    assert "TECOA" in card and "8.00/255" in card and "Base model" in card and "Selected: epoch" in card
    backbone = load_backbone(ModelConfig(path=str(output), device="cpu"))
    texts = ["a bright picture.", "a dark picture."]
    original = load_backbone(ModelConfig(path=str(setup["model"]), device="cpu"))
    torch.testing.assert_close(backbone.encode_texts(texts), original.encode_texts(texts), rtol=0, atol=0)


def test_fare_needs_no_labels(setup: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _finetune(setup, tmp_path / "fare", method="fare", dataset="unlabelled") == 0
    summary = _summary(capsys)
    assert summary["method"] == "fare" and summary["validation_robust_accuracy"] is None
    assert summary["validation_adversarial_distance"] >= 0  # type: ignore[operator]
    assert "no labels" in (tmp_path / "fare" / "README.md").read_text()


def test_resume_continues_after_the_last_checkpoint(setup: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert _finetune(setup, straight) == 0
    first = _summary(capsys)
    assert _finetune(setup, resumed, "--stop-after-epoch", "1") == 0  # a job cut into time slots
    partial = _summary(capsys)
    assert partial["epochs_done"] == 1 and _without_time(partial) == _without_time(first)[:1]
    assert not (resumed / "checkpoints" / "epoch-2.pt").exists()
    epoch_one = (resumed / "checkpoints" / "epoch-1.pt").stat().st_mtime_ns
    assert _finetune(setup, resumed, "--resume") == 0
    second = _summary(capsys)
    assert second["epochs_done"] == 2 and _without_time(second) == _without_time(first)
    assert (resumed / "checkpoints" / "epoch-1.pt").stat().st_mtime_ns == epoch_one  # epoch 1 was not redone
    a, b = _tensors(straight), _tensors(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    # without --resume an existing run is not overwritten
    assert _finetune(setup, resumed) == 2
    assert "--resume" in capsys.readouterr().err


@pytest.mark.parametrize(("dataset", "method", "message"), [
    ("unlabelled", "tecoa", "no label column"),
    ("empty", "fare", "no usable images"),
    ("unknown", "tecoa", "['cat']"),
])
def test_unusable_datasets_fail_in_one_line(setup: dict[str, Path], tmp_path: Path, dataset: str, method: str,
                                            message: str, capsys: pytest.CaptureFixture[str]) -> None:
    setup["empty"] = _parquet(tmp_path / "empty.parquet", 0, labels=None)
    setup["unknown"] = _parquet(tmp_path / "unknown.parquet", 6, labels=["bright", "cat"])
    assert _finetune(setup, tmp_path / "out", method=method, dataset=dataset) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cola finetune: ") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out" / "model.safetensors").exists()


def _setup_for(model_dir: Path, tmp_path: Path) -> dict[str, Path]:
    config = tmp_path / f"{model_dir.name}.yaml"
    config.write_text(f"model:\n  path: {model_dir}\n  device: cpu\n"
                      "taxonomy:\n  labels: [bright, dark]\n  templates: ['a {{}} picture.']\n")
    return {"config": config, "model": model_dir,
            "labelled": _parquet(tmp_path / "labelled.parquet", 24, labels=["bright", "dark"]),
            "unlabelled": _parquet(tmp_path / "unlabelled.parquet", 24, labels=None)}


def _all_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - safe_open is not a dict


@pytest.mark.parametrize("pickled_base", [False, True])
def test_fare_on_open_clip_writes_open_clip_format_with_the_text_tower_unchanged(tmp_path: Path, pickled_base: bool,
                                                                                capsys: pytest.CaptureFixture[str]
                                                                                ) -> None:
    from cola_moderation.operators.backbones import open_clip_format as fmt
    from cola_moderation.operators.backbones.checkpoint import OPEN_CLIP_TINY, save_open_clip_checkpoint
    from cola_moderation.operators.backbones.sources import load_state_dict

    base_dir = save_open_clip_checkpoint(tmp_path / "base", OPEN_CLIP_TINY, seed=4, pickle=pickled_base)
    setup = _setup_for(base_dir, tmp_path)
    output = tmp_path / "fare-open-clip"
    assert _finetune(setup, output, method="fare", dataset="unlabelled") == 0
    assert _summary(capsys)["method"] == "fare"
    assert (output / fmt.CONFIG_NAME).read_bytes() == (base_dir / fmt.CONFIG_NAME).read_bytes()
    base = load_state_dict(next(p for p in base_dir.iterdir() if p.name.startswith("open_clip_")
                                and p.suffix in (".bin", ".safetensors")))
    tuned = _all_tensors(output / fmt.SAFETENSORS_NAME)
    assert tuned.keys() == base.keys()
    for key in base:
        assert tuned[key].dtype == base[key].dtype, key
        if not key.startswith("visual."):  # text tower, logit scale: bit for bit
            assert tuned[key].numpy().tobytes() == base[key].numpy().tobytes(), key
    assert any(not torch.equal(tuned[k], base[k]) for k in base if k.startswith("visual."))
    loaded = load_backbone(ModelConfig(path=str(output), device="cpu"))
    original = load_backbone(ModelConfig(path=str(base_dir), device="cpu"))
    assert loaded.family == "open_clip"
    texts = ["a bright picture.", "a dark picture."]
    torch.testing.assert_close(loaded.encode_texts(texts), original.encode_texts(texts), rtol=0, atol=0)
    pixels = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(loaded.encode_images(pixels), original.encode_images(pixels))
    assert "open_clip" in (output / "README.md").read_text()


def test_tecoa_on_siglip_writes_siglip_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cola_moderation.operators.backbones.checkpoint import SIGLIP_TINY, save_siglip_checkpoint

    base_dir = save_siglip_checkpoint(tmp_path / "siglip", SIGLIP_TINY, seed=2)
    setup = _setup_for(base_dir, tmp_path)
    output = tmp_path / "tecoa-siglip"
    assert _finetune(setup, output) == 0
    assert _summary(capsys)["method"] == "tecoa"
    base, tuned = _all_tensors(base_dir / "model.safetensors"), _all_tensors(output / "model.safetensors")
    assert base.keys() == tuned.keys()
    for key in base:
        if not key.startswith("vision_model."):
            assert tuned[key].numpy().tobytes() == base[key].numpy().tobytes(), key
    assert any(not torch.equal(tuned[k], base[k]) for k in base if k.startswith("vision_model."))
    for name in ("spiece.model", "tokenizer_config.json", "preprocessor_config.json"):
        assert (output / name).read_bytes() == (base_dir / name).read_bytes(), name
    loaded = load_backbone(ModelConfig(path=str(output), device="cpu"))
    assert loaded.family == "siglip" and loaded.logit_bias == pytest.approx(-1.0)


class _WritesAFile:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_resume_refuses_a_crafted_checkpoint_without_running_it(setup: dict[str, Path], tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "run"
    assert _finetune(setup, output, "--stop-after-epoch", "1") == 0
    capsys.readouterr()
    marker = tmp_path / "pwned"
    torch.save({"tower": _WritesAFile(marker), "recipe": {}}, output / "checkpoints" / "epoch-1.pt")
    assert _finetune(setup, output, "--resume") == 2
    err = capsys.readouterr().err.strip()
    assert "refusing to load fine-tuning checkpoint" in err and len(err.splitlines()) == 1, err
    assert not marker.exists()
