"""Put a checkpoint directory into a Hugging Face cache the way ``hf download`` leaves it (offline, for tests)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from cola_moderation.operators.backbones import open_clip_format as fmt

HERE = Path(__file__).resolve().parent
GOLDEN = json.loads((HERE / "golden" / "open_clip_golden.json").read_text())


def put_in_hub_cache(hub_cache: Path, repo_id: str, source: Path, *, ref: str = "main") -> str:
    """Copy ``source``'s files into ``hub_cache`` (``$HF_HOME/hub``) as revision ``ref`` of model ``repo_id``:
    ``models--ORG--NAME/{blobs,snapshots/<commit>,refs/<ref>}``. Returns the commit hash."""
    repo = hub_cache / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.iterdir() if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / blob.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return commit


def write_golden_model(name: str, directory: Path, *, pickle: bool = False, seed: int | None = None) -> Path:
    """The checkpoint behind golden entry ``name``: its open_clip config and the seeded random weights real open_clip
    was run on (``seed`` overrides the golden seed, for a checkpoint with other weights)."""
    config = GOLDEN["models"][name]["config"]
    spec = fmt.OpenClipSpec.from_config(config)
    state = fmt.random_state_dict(spec, seed=GOLDEN["seed"] if seed is None else seed,
                                  logit_bias=config["model_cfg"].get("init_logit_bias"))
    if config["model_cfg"].get("custom_text"):
        state = fmt.as_custom_text(state)
    return fmt.write_checkpoint(directory, config, state, pickle=pickle)

