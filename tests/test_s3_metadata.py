"""The exhibition loader against a real S3 API (moto in server mode), not a mocked client."""

from __future__ import annotations

import json
import logging
from datetime import date

import boto3
import pytest
from conftest import unique

from lmnh.local.embedded import MotoS3
from s3_metadata import (
    Exhibition,
    MetadataError,
    exhibitions_from_files,
    is_exhibition_key,
    load_exhibitions,
    parse_exhibition,
)

GOOD = {
    "EXHIBITION_NAME": "Thunder Lizards", "EXHIBITION_ID": "EXH_05", "FLOOR": "1",
    "DEPARTMENT": "Paleontology", "START_DATE": "01/02/23", "DESCRIPTION": "Dinosaurs.",
}


def s3_client(moto_s3: MotoS3):
    """A client built by boto3's own chain from the standard variables, as the daemon builds it."""
    return boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing",
                         region_name="eu-west-2").client("s3", endpoint_url=moto_s3.endpoint)


def test_exactly_the_six_real_exhibitions_come_back(moto_s3: MotoS3, real_bucket: str,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        exhibitions = load_exhibitions(s3_client(moto_s3), real_bucket)
    assert sorted(exhibitions) == [0, 1, 2, 3, 4, 5]
    assert {e.public_id for e in exhibitions.values()} == {f"EXH_0{n}" for n in range(6)}
    assert exhibitions[0] == Exhibition(
        0, "EXH_00", "Measureless to Man", "1", "Geology", date(2021, 8, 23),
        "An immersive 3D experience: delve deep into a previously-inaccessible cave system.")
    assert exhibitions[1].floor == "Vault"
    assert exhibitions[5].name == "Thunder Lizards"
    warnings = [r for r in caplog.records if r.name == "s3_metadata"]
    assert warnings == []  # the decoys are not even read, so nothing to warn about


@pytest.mark.slow
def test_decoys_and_malformed_files_are_ignored_and_all_pages_listed(
        moto_s3: MotoS3, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    client = s3_client(moto_s3)
    decoys = {
        "lms_exhibition_mammoth.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_07"}),
        "lmnh_exhibition_mammoth.jpg": b"\xff\xd8\xff",
        "lmnh_exhibition_mammoth.json.bak": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_08"}),
        "archive/lmnh_exhibition_old.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_09"}),
        "exhibitions.csv": "a,b\n1,2\n",
        "other.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_10"}),
        "lmnh_exhibition_broken.json": "{not json",
        "lmnh_exhibition_noname.json": json.dumps({k: v for k, v in GOOD.items()
                                                   if k != "EXHIBITION_NAME"}),
        "lmnh_exhibition_baddate.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_11",
                                                           "START_DATE": "31/02/23"}),
        "lmnh_exhibition_badid.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_5"}),
    }
    for key, body in decoys.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    for n in range(1100):  # more than one page of 1,000 keys, before and after the real files
        client.put_object(Bucket=bucket, Key=f"a_filler/{n:04d}.jpg", Body=b"")
    client.put_object(Bucket=bucket, Key="zz_lmnh_exhibition_x.json", Body=b"{}")
    client.put_object(Bucket=bucket, Key="lmnh_exhibition_zz_mammoth.json",
                      Body=json.dumps(GOOD | {"EXHIBITION_ID": "EXH_12", "EXHIBITION_NAME": "Big"}))

    with caplog.at_level(logging.WARNING):
        exhibitions = load_exhibitions(client, bucket)

    assert sorted(exhibitions) == [0, 1, 2, 3, 4, 5, 12]  # the one past the first page counts
    assert exhibitions[12].name == "Big"
    warnings = [r for r in caplog.records if r.name == "s3_metadata"]
    warned = " ".join(r.getMessage() for r in warnings)
    for key in ("lmnh_exhibition_broken.json", "lmnh_exhibition_noname.json",
                "lmnh_exhibition_baddate.json", "lmnh_exhibition_badid.json"):
        assert key in warned
    assert len(warnings) == 4


def test_two_files_claiming_one_id_is_an_error(moto_s3: MotoS3, bucket: str) -> None:
    client = s3_client(moto_s3)
    client.put_object(Bucket=bucket, Key="lmnh_exhibition_dino2.json", Body=json.dumps(GOOD))
    with pytest.raises(MetadataError, match="EXH_05"):
        load_exhibitions(client, bucket)


def test_a_bucket_without_a_valid_exhibition_is_an_error(moto_s3: MotoS3) -> None:
    client = s3_client(moto_s3)
    name = unique("empty").replace("_", "-")
    client.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"})
    client.put_object(Bucket=name, Key="lmnh_exhibition_dino.txt", Body=b"EXH_05, Dinosaur")
    with pytest.raises(MetadataError, match="no valid"):
        load_exhibitions(client, name)


@pytest.mark.parametrize(("key", "expected"), [
    ("lmnh_exhibition_cave.json", True),
    ("lmnh_exhibition_a_b.json", True),
    ("lmnh_exhibition", False),
    ("lmnh_exhibition_.json", False),
    ("lmnh_exhibition_dino.txt", False),
    ("lms_exhibition_dino.json", False),
    ("lmnh_exhibition_dino.JSON", False),
    ("dir/lmnh_exhibition_dino.json", False),
    ("lmnh_hist_data_0.csv", False),
])
def test_which_keys_are_exhibition_files(key: str, expected: bool) -> None:
    assert is_exhibition_key(key) is expected


def test_two_digit_ids_beyond_nine_are_their_own_site() -> None:
    body = json.dumps(GOOD | {"EXHIBITION_ID": "EXH_10"}).encode()
    assert parse_exhibition(body).number == 10


@pytest.mark.parametrize("body", [
    b"", b"[]", b"\xff", json.dumps(GOOD | {"FLOOR": 1}).encode(),
    json.dumps(GOOD | {"START_DATE": "2023-02-01"}).encode(),
    json.dumps(GOOD | {"EXHIBITION_ID": "EXH_XX"}).encode(),
    json.dumps(GOOD | {"DESCRIPTION": "  "}).encode(),
])
def test_malformed_files_are_refused_with_a_reason(body: bytes) -> None:
    with pytest.raises(ValueError, match=r".+"):
        parse_exhibition(body)
    with pytest.raises(MetadataError):
        exhibitions_from_files({"lmnh_exhibition_x.json": body})
