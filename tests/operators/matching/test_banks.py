"""Bank files: our CSV / Parquet layout, a ThreatExchange (Hasher-Matcher-Actioner) CSV export, and the one-line
errors that fail config loading."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cola_moderation.operators.errors import ConfigError
from cola_moderation.operators.matching.banks import BankError, load_bank
from cola_moderation.operators.matching.config import BankConfig
from cola_moderation.pipeline.runtime.config import parse_config
from tests.connectors.parquet.test_s3 import BUCKET, s3  # noqa: F401 - the moto S3 server fixture

PDQ = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22"  # ThreatExchange's sample PDQ
MD5 = "d41d8cd98f00b204e9800998ecf8427e"


def test_csv_and_parquet_banks(tmp_path: Path) -> None:
    csv_file = tmp_path / "bank.csv.gz"
    csv_file.write_bytes(gzip.compress(f"signal_type,hash,label\npdq,{PDQ.upper()},meme\nMD5,{MD5},\n".encode()))
    bank = load_bank("b", BankConfig(path=str(csv_file)))
    assert bank.pdq_hex == [PDQ] and bank.pdq_labels == ["meme"] and bank.md5 == {MD5: None}
    parquet_file = tmp_path / "bank.parquet"
    pq.write_table(pa.table({"signal_type": ["pdq", "md5"], "hash": [PDQ, MD5]}), parquet_file)
    bank = load_bank("b", BankConfig(path=str(parquet_file)))
    assert bank.pdq_hex == [PDQ] and bank.pdq_labels == [None] and list(bank.md5) == [MD5]
    assert bank.pdq_words.shape == (1, 4)


def test_threatexchange_export(tmp_path: Path) -> None:
    """The CSV that ``threatexchange dataset -P --csv`` writes (the exchange data Hasher-Matcher-Actioner banks)."""
    export = tmp_path / "collab.csv"
    export.write_text(
        "signal_type,signal_str,collab,category,tags\n"
        f"pdq,{PDQ},Sample Data,POSITIVE_CLASS,media_type_photo known_meme\n"
        f"video_md5,{MD5},Sample Data,INVESTIGATION_SEED,\n"
        f"pdq,{'0' * 64},Sample Data,NEGATIVE_CLASS,false_positive\n")
    bank = load_bank("te", BankConfig(path=str(export), action="block"))
    assert bank.pdq_hex == [PDQ] and bank.pdq_labels == ["media_type_photo known_meme"]
    assert bank.md5 == {MD5: None} and bank.skipped == 1


@pytest.mark.parametrize(("row", "message"), [
    (f"pdq,{PDQ[:-1]}z", "row 2: pdq hash is not hex (character 'z'"),
    (f"pdq,{PDQ[:-1]}", "row 2: pdq hash must be 64 hex digits, got 63"),
    (f"md5,{MD5}00", "row 2: md5 hash must be 32 hex digits, got 34"),
    (f"sha1,{MD5}", "row 2: unknown signal_type 'sha1'"),
    ("pdq,", "row 2: empty hash"),
])
def test_bad_rows_fail_config_loading_with_one_line(tmp_path: Path, row: str, message: str) -> None:
    bank = tmp_path / "known.csv"
    bank.write_text(f"signal_type,hash\nmd5,{MD5}\n{row}\n")
    config = {"taxonomy": {"labels": ["a", "b"]}, "matching": {"banks": {"known": {"path": "known.csv"}}}}
    with pytest.raises(ConfigError) as raised:
        parse_config(config, base_dir=tmp_path, calibrate=False)
    text = str(raised.value)
    assert "\n" not in text and text.startswith(f"bank 'known': {bank} ") and message in text, text


def test_missing_file_and_columns(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="file not found"):
        load_bank("x", BankConfig(path=str(tmp_path / "none.csv")))
    (tmp_path / "cols.csv").write_text("kind,value\npdq,00\n")
    with pytest.raises(BankError, match=r"missing column\(s\) \['signal_type', 'hash'\]"):
        load_bank("x", BankConfig(path=str(tmp_path / "cols.csv")))
    (tmp_path / "bank.txt").write_text("")
    with pytest.raises(BankError, match="unknown file type"):
        load_bank("x", BankConfig(path=str(tmp_path / "bank.txt")))


def test_relative_paths_resolve_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "b.csv").write_text(f"signal_type,hash\nmd5,{MD5}\n")
    config = parse_config({"taxonomy": {"labels": ["a", "b"]}, "matching": {"banks": {"b": {"path": "b.csv"}}}},
                          base_dir=tmp_path, calibrate=False)
    assert config.matching.banks["b"].path == str(tmp_path / "b.csv")
    assert config.matching.enabled and config.matching.pdq_threshold == 31 and config.matching.pdq_quality_min == 50


def test_bank_on_object_storage(s3: Any) -> None:  # noqa: F811 - the imported fixture
    """A Parquet bank on S3 (a real moto server, pyarrow's S3 filesystem; endpoint and credentials from the AWS_*
    environment as for a user), named by its URI in the config."""
    import pyarrow.fs as pafs

    with s3.open_output_stream(f"{BUCKET}/banks/known.parquet") as stream:
        pq.write_table(pa.table({"signal_type": ["pdq", "md5"], "hash": [PDQ, MD5], "label": ["x", "y"]}), stream)
    uri = f"s3://{BUCKET}/banks/known.parquet"
    config = parse_config({"taxonomy": {"labels": ["a", "b"]}, "matching": {"banks": {"remote": {"path": uri}}}},
                          base_dir=Path("/nonexistent"), calibrate=False)
    assert config.matching.banks["remote"].path == uri  # URIs are not resolved as local paths
    bank = load_bank("remote", config.matching.banks["remote"])
    assert bank.pdq_hex == [PDQ] and bank.md5 == {MD5: "y"}
    with pytest.raises(BankError, match=f"bank 'gone': s3://{BUCKET}/banks/none.parquet: "):
        load_bank("gone", BankConfig(path=f"s3://{BUCKET}/banks/none.parquet"))
    assert isinstance(s3, pafs.S3FileSystem)
