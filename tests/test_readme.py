"""The README is true: its library examples run (in-process, Ray Data, Ray Serve, a Kafka consumer loop) on the
bundled model and sample, its ``cola`` command lines parse, its ``serve run`` line builds the app, and no Markdown
link points outside the repository."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from cola_moderation.pipeline.cli.main import COMMANDS, parse_args
from cola_moderation.resources import sample_parquet, samples_dir

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
IMAGES = samples_dir() / "images"


def example(name: str, **constants: Any) -> str:
    """The Python block after ``<!-- example: NAME -->``, with its UPPERCASE constants set to ``constants``."""
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", README, re.S)
    assert match, f"README example {name!r} not found"
    code = match.group(1)
    for key, value in constants.items():
        code, count = re.subn(rf"^{key} = .*$", f"{key} = {value!r}", code, flags=re.M)
        assert count == 1, f"example {name}: constant {key} not found"
    return code


def run_example(name: str, **constants: Any) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"readme_{name.replace('-', '_')}"}
    exec(compile(example(name, **constants), f"README.md:{name}", "exec"), namespace)
    return namespace


def test_markdown_links_stay_inside_the_repository() -> None:
    files = [REPO / "README.md", REPO / "deploy" / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    checked = 0
    for file in files:
        for target in re.findall(r"\]\(([^)\s]+)\)", file.read_text()):
            path = target.split("#")[0]
            assert "://" not in target and not target.startswith(("/", "mailto:")), f"{file.name}: {target}"
            resolved = (file.parent / path).resolve()
            assert resolved.is_relative_to(REPO) and resolved.exists(), f"{file.relative_to(REPO)}: {target}"
            checked += 1
    assert checked >= 10


def test_readme_cola_command_lines_parse() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", README, re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    commands = [shlex.split(line) for line in lines if line.startswith("cola ")]
    assert {argv[1] for argv in commands} >= {"demo", "classify", "batch", "eval"}
    for argv in commands:
        assert argv[1] in COMMANDS, argv
        parse_args(argv[1:])  # SystemExit on an unknown command or flag


def test_serve_run_line_builds_the_app() -> None:
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.api import Application

    (line,) = [line for line in README.splitlines() if line.startswith("serve run ")]
    import_path, *arguments = shlex.split(line)[2:]
    module_name, _, attribute = import_path.partition(":")
    builder = getattr(__import__(module_name, fromlist=[attribute]), attribute)
    args = dict(argument.split("=", 1) for argument in arguments)
    assert isinstance(call_user_app_builder_with_args_if_necessary(builder, args), Application)
    with pytest.raises(Exception, match="config"):
        call_user_app_builder_with_args_if_necessary(builder, {"confg": "reference"})


def test_in_process_example(capsys: pytest.CaptureFixture[str]) -> None:
    run_example("in-process", IMAGES=[str(IMAGES / "sneaker.png"), str(IMAGES / "bag.png"),
                                      str(IMAGES / "corrupt.png")])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines] == ["sneaker", "bag", "error:"], lines
    assert lines[0].split()[-1] in ("allow", "review", "block")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    from cola_moderation.pipeline.jobs.ray_runtime import init_ray
    from cola_moderation.pipeline.runtime.ray_config import RayConfig

    init_ray(RayConfig())
    yield
    import ray

    ray.shutdown()


def test_ray_data_example(ray_cluster: None, tmp_path: Path) -> None:
    shutil.copy(sample_parquet(), tmp_path / "sample.parquet")
    run_example("ray-data", INPUT=str(tmp_path / "sample.parquet"), OUTPUT=str(tmp_path / "moderated"))
    out = pd.read_parquet(tmp_path / "moderated")
    sample = pq.read_table(sample_parquet()).to_pandas()
    assert len(out) == len(sample) and "image" not in out.columns
    assert set(out["id"]) == set(sample["id"])
    errors = out[out["error"].notna()]
    assert len(errors) == 4 and errors["label"].isna().all()
    clean = out[out["error"].isna() & ~out["attacked"].astype(bool)]
    assert (clean["label"] == clean["true_label"]).mean() >= 0.8
    assert set(out["action"].dropna()) <= {"allow", "review", "block"}


def test_serve_example(ray_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    from ray import serve

    from cola_moderation.connectors.local.broker import free_port

    try:
        run_example("serve", PORT=free_port(), IMAGE=str(IMAGES / "sandal.jpg"))
        printed = capsys.readouterr().out  # before the shutdown: Ray forwards worker log lines to stdout too
    finally:
        serve.shutdown()
    (line,) = [line for line in printed.splitlines() if line.startswith("{'schema_version'")]
    record = ast.literal_eval(line)
    assert record["label"] == "sandal" and record["route"] in ("output", "quarantine")


def test_kafka_consumer_loop_example(kafka_broker: Any) -> None:
    from cola_moderation.connectors.kafka.admin import ensure_topics
    from cola_moderation.connectors.local.kafka_tools import produce, read_topic
    from cola_moderation.pipeline.cli.demo import sample_messages

    bootstrap = kafka_broker.bootstrap_servers
    ensure_topics(bootstrap, {"uploads": 1, "moderated": 1, "uploads.dead_letter": 1})
    messages = sample_messages()  # 324 rows: clean, attacked and 4 corrupt images
    produce(bootstrap, "uploads", messages)
    run_example("kafka", BOOTSTRAP=bootstrap, IDLE_STOP_S=8.0)
    moderated = read_topic(bootstrap, "moderated", expect=len(messages) - 4)
    dead = read_topic(bootstrap, "uploads.dead_letter", expect=4)
    assert (len(moderated), len(dead)) == (len(messages) - 4, 4)
    truth = {key: dict(headers).get("true_label") for key, _, headers in messages}
    records = [json.loads(message.value) for message in moderated]
    assert {record["action"] for record in records} <= {"allow", "review", "block"}
    correct = sum(record["label"].encode() == truth[message.key] for message, record in
                  zip(moderated, records, strict=True))
    assert correct >= 0.8 * len(records)
