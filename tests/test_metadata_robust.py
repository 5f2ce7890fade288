"""Metadata that can never stop the pipeline: malformed, unreadable or unstorable exhibition
files, and an exhibition number reused with another name."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator

import psycopg2
import pytest
from conftest import Broker, Database, PgServer, make_database, wait_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_faults import at_site

import db
from lmnh.local.embedded import MotoS3
from s3_metadata import FIELDS, MetadataError, exhibitions_from_files, load_exhibitions

GOOD = {"EXHIBITION_NAME": "Mammoths", "EXHIBITION_ID": "EXH_06", "FLOOR": "2",
        "DEPARTMENT": "Paleontology", "START_DATE": "01/12/21", "DESCRIPTION": "Ice age giants."}


def s3(moto_s3: MotoS3):
    return moto_s3.client()


def test_exhibitions_the_database_cannot_hold_are_skipped_with_a_warning(
        moto_s3: MotoS3, bucket: str, database: Database,
        caplog: pytest.LogCaptureFixture) -> None:
    client = s3(moto_s3)
    unstorable = {
        "lmnh_exhibition_huge.json": GOOD | {"EXHIBITION_ID": "EXH_40000"},
        "lmnh_exhibition_nul.json": GOOD | {"EXHIBITION_ID": "EXH_07", "DESCRIPTION": "a\x00b"},
        "lmnh_exhibition_surrogate.json": GOOD | {"EXHIBITION_ID": "EXH_08",
                                                  "EXHIBITION_NAME": "\ud800"},
        "lmnh_exhibition_long.json": GOOD | {"EXHIBITION_ID": "EXH_09", "DEPARTMENT": "D" * 9000},
    }
    for key, doc in unstorable.items():
        client.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="s3_metadata"):
        exhibitions = load_exhibitions(client, bucket)
    assert sorted(exhibitions) == [0, 1, 2, 3, 4, 5]
    for key in unstorable:
        assert key in caplog.text
    conn = psycopg2.connect(database.url)
    try:
        result = db.upsert_exhibitions(conn, exhibitions.values())
        assert (result.conflicts, result.refused) == ((), ())
        assert sorted(result.held) == [0, 1, 2, 3, 4, 5]
    finally:
        conn.close()


def test_a_file_broken_on_a_refresh_keeps_its_exhibition_as_last_loaded(
        moto_s3: MotoS3, bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    client = s3(moto_s3)
    loaded = load_exhibitions(client, bucket)
    client.put_object(Bucket=bucket, Key="lmnh_exhibition_seas.json", Body=b'{"EXHIBITION')
    with caplog.at_level(logging.WARNING, logger="s3_metadata"):
        refreshed = load_exhibitions(client, bucket, loaded)
    assert refreshed == loaded
    assert "lmnh_exhibition_seas.json" in caplog.text and "keeping EXH_03" in caplog.text
    client.delete_object(Bucket=bucket, Key="lmnh_exhibition_seas.json")  # removed: gone
    assert sorted(load_exhibitions(client, bucket, loaded)) == [0, 1, 2, 4, 5]


def test_an_unreadable_file_keeps_its_exhibition_too(caplog: pytest.LogCaptureFixture) -> None:
    files: dict[str, bytes | None] = {"lmnh_exhibition_mammoth.json": json.dumps(GOOD).encode()}
    loaded = exhibitions_from_files(files)
    with caplog.at_level(logging.WARNING, logger="s3_metadata"):
        assert exhibitions_from_files({"lmnh_exhibition_mammoth.json": None}, loaded) == loaded
    assert "lmnh_exhibition_mammoth.json is unusable (it could not be read)" in caplog.text


def test_a_reused_number_is_a_warning_naming_both(caplog: pytest.LogCaptureFixture) -> None:
    loaded = exhibitions_from_files({"lmnh_exhibition_mammoth.json": json.dumps(GOOD).encode()})
    other = GOOD | {"EXHIBITION_NAME": "Sabre Teeth", "DEPARTMENT": "Zoology"}
    with caplog.at_level(logging.WARNING, logger="s3_metadata"):
        exhibitions_from_files({"lmnh_exhibition_cats.json": json.dumps(other).encode()}, loaded)
    assert "'Sabre Teeth' (Zoology)" in caplog.text and "'Mammoths' (Paleontology)" in caplog.text


# ------------------------------------------------------------------ property: loader vs upsert


texts = st.one_of(st.text(max_size=30), st.text(max_size=3000),
                  st.sampled_from(["", " ", "\x00", "a\x00", "\ud800", "EXH_1", "x" * 600]))
ids = st.one_of(st.from_regex(r"EXH_[0-9]{1,7}", fullmatch=True), texts)
dates = st.one_of(st.dates().map(lambda d: d.strftime("%d/%m/%y")), texts)
values = st.one_of(texts, st.integers(), st.none(), st.lists(st.integers(), max_size=2))
documents = st.fixed_dictionaries(
    {"EXHIBITION_ID": ids, "START_DATE": dates},
    optional={name: values for name in FIELDS if name not in ("EXHIBITION_ID", "START_DATE")}
    | {"EXTRA": values})
bodies = st.one_of(
    documents.map(lambda doc: json.dumps(doc).encode("utf-8", "surrogatepass")),
    documents.map(lambda doc: json.dumps(doc, ensure_ascii=False).encode("utf-8",
                                                                       "surrogatepass")),
    st.binary(max_size=200))
bucket_files = st.dictionaries(st.from_regex(r"lmnh_exhibition_[a-z]{1,4}\.json", fullmatch=True),
                               bodies, max_size=4)


@pytest.fixture(scope="module")
def property_db(pg_server: PgServer) -> Iterator[db.Connection]:
    database = make_database(pg_server)
    conn = psycopg2.connect(database.url)
    yield conn
    conn.close()


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files=bucket_files)
def test_the_loader_returns_only_exhibitions_the_upsert_accepts(
        property_db: db.Connection, files: dict[str, bytes]) -> None:
    try:
        exhibitions = exhibitions_from_files(dict(files))
    except MetadataError:
        return  # its own error: no usable file, or two claiming one number
    result = db.upsert_exhibitions(property_db, exhibitions.values())
    assert result.refused == ()
    with property_db.cursor() as cur:
        for exhibition in exhibitions.values():
            cur.execute("SELECT exhibition_name FROM exhibition WHERE exhibition_id = %s",
                        (exhibition.number,))
            stored = cur.fetchone()
            assert stored is not None  # stored, or kept as it was (a reused number)
    property_db.rollback()


# ------------------------------------------------------------------ the daemon


def test_no_metadata_file_stops_the_daemon_and_stored_rows_keep_their_exhibition(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline,
        moto_s3: MotoS3, bucket: str) -> None:
    env = pipeline_env | {"METADATA_REFRESH_S": "1"}
    client = s3(moto_s3)
    run = run_pipeline(env)
    broker.produce(env["TOPIC"], [at_site("3", 4)])
    wait_until(lambda: database.scalar("SELECT count(*) FROM v_rating") == 1, 60, "a rating")

    hostile = {
        "lmnh_exhibition_huge.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_40000"}),
        "lmnh_exhibition_nul.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_08",
                                                       "DESCRIPTION": "a\x00b"}),
        "lmnh_exhibition_garbage.json": b"\xff\xfe{",
        "lmnh_exhibition_seas.json": b"[]",  # EXH_03's own file, broken
        "lmnh_exhibition_cats.json": json.dumps(GOOD | {"EXHIBITION_ID": "EXH_01",
                                                        "EXHIBITION_NAME": "Sabre Teeth"}),
    }
    client.delete_object(Bucket=bucket, Key="lmnh_exhibition_beetles.json")  # EXH_01's old file
    for key, body in hostile.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    client.put_object(Bucket=bucket, Key="lmnh_exhibition_mammoth.json", Body=json.dumps(GOOD))
    wait_until(lambda: "added EXH_06" in run.text(), 30, "the refresh with the good new file")
    wait_until(lambda: "'Sabre Teeth'" in run.text() and "'Six Legs, One Planet'" in run.text(),
               30,
               "the reused number's warning")
    time.sleep(3)  # a few more refreshes over the same files
    assert run.process is not None and run.process.poll() is None, run.text()[-3000:]
    broker.produce(env["TOPIC"], [at_site("3", 2), at_site("6", 1), at_site("1", 0)])
    wait_until(lambda: database.scalar("SELECT count(*) FROM rating_interaction") == 4, 30,
               "presses at the kept, the new and the reused exhibition accepted")
    assert run.stop() == 0
    output = run.text()
    for key in hostile:
        assert key in output
    assert "keeping EXH_03 as last loaded" in output
    assert database.scalar("SELECT exhibition_name FROM exhibition WHERE exhibition_id = 1") \
        == "Six Legs, One Planet"  # stored rows keep their exhibition
    assert database.query("SELECT exhibition_name FROM v_rating ORDER BY event_at_utc LIMIT 1") \
        == [("Deep Blue",)]
    assert "Traceback" not in output
