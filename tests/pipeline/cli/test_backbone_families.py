"""Every backbone family through the user commands, offline: a random open_clip ViT-B-32 (the weights real open_clip
was run on, tests/operators/backbones/golden) and a random SigLIP, each in a Hugging Face cache (``HF_HOME`` =
a temporary directory, ``HF_HUB_OFFLINE=1``) as ``hf-hub:ORG/NAME`` and as a local directory, through
``cola classify``, ``cola batch``, ``cola serve`` and ``cola eval --attack pgd``. Scores must equal the family's own
implementation: open_clip's recorded zero-shot probabilities, transformers' ``SiglipModel`` sigmoid."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from cola_moderation.operators.backbones.checkpoint import SIGLIP_TINY, save_siglip_checkpoint
from tests.operators.backbones.hub_cache import GOLDEN, HERE, put_in_hub_cache, write_golden_model
from tests.pipeline.cli.test_serve import free_port, wait_healthy

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Family:
    name: str
    hub_path: str
    directory: Path
    labels: tuple[str, ...]
    templates: tuple[str, ...]
    images: tuple[bytes, ...]
    expected: tuple[dict[str, float], ...]
    """Per image: label -> the family's own zero-shot score."""


def _siglip_expected(directory: Path, images: tuple[bytes, ...], labels: tuple[str, ...]) -> tuple[dict[str, float],
                                                                                                  ...]:
    from transformers import AutoTokenizer, SiglipModel

    from cola_moderation.operators.decode import ImageDecoder

    model = SiglipModel.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    with ImageDecoder(size=SIGLIP_TINY.image_size) as decoder:
        pixels = decoder.decode(list(images)).pixels
    tokens = tokenizer([f"a photo of a {label}." for label in labels], padding="max_length", truncation=True,
                       max_length=SIGLIP_TINY.context_length, return_tensors="pt")
    with torch.no_grad():
        probs = model(input_ids=tokens["input_ids"], pixel_values=(pixels - 0.5) / 0.5).logits_per_image.sigmoid()
    return tuple(dict(zip(labels, row, strict=True)) for row in probs.tolist())


def _png(size: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="module")
def families(hf_home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Family]:
    root = tmp_path_factory.mktemp("models")
    golden = GOLDEN["models"]["vit-b-32"]
    open_clip_dir = write_golden_model("vit-b-32", root / "open-clip-vit-b-32")
    put_in_hub_cache(hf_home / "hub", "test-org/random-vit-b-32", open_clip_dir)
    labels = tuple(GOLDEN["labels"])
    open_clip = Family("open_clip", "hf-hub:test-org/random-vit-b-32", open_clip_dir, labels,
                       tuple(GOLDEN["templates"]),
                       tuple((HERE / "golden" / "images" / image).read_bytes() for image in golden["images"]),
                       tuple(dict(zip(labels, row, strict=True)) for row in golden["zero_shot_probs"]))
    siglip_dir = save_siglip_checkpoint(root / "siglip-tiny", SIGLIP_TINY, seed=5)
    put_in_hub_cache(hf_home / "hub", "test-org/random-siglip", siglip_dir)
    images = tuple(_png(SIGLIP_TINY.image_size, seed) for seed in range(3))
    siglip = Family("siglip", "hf-hub:test-org/random-siglip", siglip_dir, labels, ("a photo of a {}.",), images,
                    _siglip_expected(siglip_dir, images, labels))
    return {"open_clip": open_clip, "siglip": siglip}


def _env(hf_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")}
    return {**env, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _config(path: Path, family: Family, model_path: str, **extra: object) -> Path:
    taxonomy = {"labels": list(family.labels), "templates": list(family.templates), "top_k": len(family.labels)}
    path.write_text(json.dumps({
        "model": {"path": model_path, "device": "cpu"}, "taxonomy": taxonomy, "method": "clip",
        "detector": {"enabled": False}, "ray": {"num_cpus": 2, "worker_num_cpus": 0.5},
        "serve": {"min_replicas": 1, "max_replicas": 1}, **extra,
    }))
    return path


def _cola(hf_home: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cola_moderation.pipeline.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=_env(hf_home))


def _assert_scores(topk: list[dict[str, float]], expected: dict[str, float]) -> None:
    assert {entry["label"] for entry in topk} == set(expected)
    for entry in topk:
        assert abs(entry["score"] - expected[entry["label"]]) <= TOLERANCE, (entry, expected)
    assert topk[0]["label"] == max(expected, key=expected.__getitem__)


@pytest.mark.parametrize("spelling", ["hub", "directory"])
@pytest.mark.parametrize("name", ["open_clip", "siglip"])
def test_classify_matches_the_familys_own_scores(families: dict[str, Family], hf_home: Path, tmp_path: Path,
                                                 name: str, spelling: str, capsys: pytest.CaptureFixture[str]) -> None:
    family = families[name]
    config = _config(tmp_path / "c.json", family, family.hub_path if spelling == "hub" else str(family.directory))
    paths = []
    for index, image in enumerate(family.images):
        paths.append(tmp_path / f"{index}.png")
        paths[-1].write_bytes(image)
    if spelling == "hub":  # a user's shell: a fresh process that sees only HF_HOME's cache
        result = _cola(hf_home, "classify", "--config", str(config), *map(str, paths))
        assert result.returncode == 0, result.stderr[-3000:]
        stdout = result.stdout
    else:
        from cola_moderation.pipeline.cli import main

        assert main(["classify", "--config", str(config), *map(str, paths)]) == 0
        stdout = capsys.readouterr().out
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in paths]
    for line, expected in zip(lines, family.expected, strict=True):
        _assert_scores(line["topk"], expected)
        assert line["score"] == pytest.approx(line["topk"][0]["score"], abs=1e-6)


@pytest.mark.parametrize("name", ["open_clip", "siglip"])
def test_batch_job_writes_the_same_scores(families: dict[str, Family], hf_home: Path, tmp_path: Path,
                                          name: str) -> None:
    family = families[name]
    config = _config(tmp_path / "c.json", family, family.hub_path)
    ids = [f"img-{i}" for i in range(len(family.images))]
    pq.write_table(pa.table({"id": ids, "image": list(family.images)}), tmp_path / "in.parquet")
    result = _cola(hf_home, "batch", "--config", str(config), "--input", str(tmp_path / "in.parquet"), "--output",
                   str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {row["id"]: row for row in pq.read_table(tmp_path / "out" / "route=output").to_pylist()}
    assert sorted(rows) == ids
    for image_id, expected in zip(ids, family.expected, strict=True):
        topk = rows[image_id]["topk"]
        _assert_scores(json.loads(topk) if isinstance(topk, str) else topk, expected)
        assert rows[image_id]["model"] == family.hub_path


@pytest.mark.parametrize("name", ["open_clip", "siglip"])
def test_serve_answers_with_the_same_scores(families: dict[str, Family], hf_home: Path, tmp_path: Path,
                                            name: str) -> None:
    family = families[name]
    config = _config(tmp_path / "c.json", family, family.hub_path)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "cola_moderation.pipeline.cli", "serve", "--config", str(config),
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env(hf_home))
    try:
        wait_healthy(url, process, timeout_s=300)
        for index, (image, expected) in enumerate(zip(family.images, family.expected, strict=True)):
            response = httpx.post(f"{url}/v1/moderate?id=r-{index}", content=image,
                                  headers={"content-type": "image/png"}, timeout=120)
            assert response.status_code == 200, response.text
            _assert_scores(response.json()["topk"], expected)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]


@pytest.mark.parametrize("name", ["open_clip", "siglip"])
def test_eval_pgd_runs_on_the_family(families: dict[str, Family], hf_home: Path, tmp_path: Path, name: str) -> None:
    family = families[name]
    # eval scores every method (COLA, its ablations, the cascade): 2 views instead of 5 keep ViT-B-32 on 2 cores short
    config = _config(tmp_path / "c.json", family, family.hub_path, cola={"views": {"count": 2}})
    images, expected_scores = family.images[:2], family.expected[:2]
    truth = [max(expected, key=expected.__getitem__) for expected in expected_scores]  # clean top-1 is right
    pq.write_table(pa.table({"image": list(images), "label": truth}), tmp_path / "labelled.parquet")
    result = _cola(hf_home, "eval", "--config", str(config), "--dataset", str(tmp_path / "labelled.parquet"),
                   "--attack", "pgd", "--eps", "1/255", "--steps", "1", "--report", str(tmp_path / "r.json"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"]["family"] == name and report["model"]["path"] == family.hub_path
    assert ("logit_bias" in report["model"]) == (name == "siglip")
    assert report["dataset"]["images"] == len(images)
    assert report["accuracy"]["clip"]["clean"] == pytest.approx(1.0)
    assert 0.0 <= report["accuracy"]["clip"]["1/255"] <= 1.0
