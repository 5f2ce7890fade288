"""A bounded reject log: each line keeps at most REJECT_LOG_MAX_VALUE_BYTES of the raw value, plus
its full length and SHA-256, in the same encodings (JSON string, b'...', null), one line always."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Producer
from conftest import Broker, Database, PipelineRun, wait_until
from hypothesis import given
from hypothesis import strategies as st

from lmnh.core.reject_lines import format_reject_line

AT = datetime(2026, 11, 22, 12, 0, 1, 123000, tzinfo=UTC)


def fields(line: str) -> list[str]:
    assert line.endswith("\n") and len(line.splitlines()) == 1  # whatever splits it
    parts = line[:-1].split("\t")
    assert len(parts) == 7, parts
    return parts


def shown_bytes(shown: str) -> bytes | None:
    """The bytes a line's value field stands for."""
    if shown == "null":
        return None
    if shown.startswith("b"):
        return ast.literal_eval(shown)
    return json.loads(shown).encode("utf-8")


@given(value=st.one_of(st.none(), st.binary(max_size=300),
                       st.text(max_size=200).map(lambda text: text.encode("utf-8"))),
       limit=st.integers(min_value=0, max_value=320))
def test_a_line_keeps_a_prefix_and_the_full_length_and_hash(value: bytes | None,
                                                            limit: int) -> None:
    line = format_reject_line(AT, "invalid_json", "lmnh/0/7", "detail", value, limit)
    _, reason, location, _, shown, length, sha256 = fields(line)
    assert (reason, location) == ("invalid_json", "lmnh/0/7")
    kept = shown_bytes(shown)
    if value is None:
        assert kept is None and (length, sha256) == ("0", hashlib.sha256(b"").hexdigest())
        return
    assert (int(length), sha256) == (len(value), hashlib.sha256(value).hexdigest())
    assert kept is not None and value.startswith(kept) and len(kept) <= limit
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        assert shown.startswith("b") and kept == value[:limit]
    else:
        assert not shown.startswith("b")  # UTF-8 stays a JSON string, cut between characters
        assert len(kept) > limit - 4 or kept == value


def test_unicode_line_separators_stay_on_one_line_and_read_back() -> None:
    value = "a\u2028b\x85c\u2029d\re\nf".encode()
    line = format_reject_line(AT, "invalid_json", "lmnh/0/7", "detail", value, 4096)
    assert shown_bytes(fields(line)[4]) == value


def test_utf8_is_never_cut_inside_a_character() -> None:
    value = ("é" * 10 + "😀" * 10).encode("utf-8")  # 2-byte then 4-byte characters
    for limit in range(len(value) + 1):
        shown = fields(format_reject_line(AT, "r", "l", "d", value, limit))[4]
        kept = json.loads(shown)  # valid JSON of valid text: no half character
        text = value.decode("utf-8")
        assert text.startswith(kept) and len(kept.encode("utf-8")) <= limit
        # as many whole characters as fit
        assert kept == text or len(text[:len(kept) + 1].encode("utf-8")) > limit


def test_a_flood_of_megabyte_junk_through_the_pipeline_writes_bounded_lines(
        broker: Broker, database: Database, pipeline_env: dict[str, str], run_pipeline) -> None:
    megabyte = 1 << 20
    junk = [
        os.urandom(megabyte),                                   # not UTF-8
        ("é" * (megabyte // 2)).encode("utf-8"),                # UTF-8, not JSON
        json.dumps({"at": "2026-11-22T12:00:00+00:00", "site": "1", "val": 4,
                    "x" * 100: "y" * megabyte}).encode(),       # an unexpected key
        b"{\"at\": \"" + b"\n\r\t\x00" * (megabyte // 4) + b"\"}",  # escapes expand
    ]
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 4 * megabyte})
    topic = pipeline_env["TOPIC"]
    for value in junk:
        producer.produce(topic, value, partition=0)
    assert producer.flush(60) == 0
    run: PipelineRun = run_pipeline(pipeline_env)
    log = Path(pipeline_env["REJECT_LOG"])
    wait_until(lambda: log.exists() and log.read_bytes().count(b"\n") == len(junk), 90,
               "a reject line per junk message")
    wait_until(lambda: database.scalar("SELECT count(*) FROM rejected_message") == len(junk), 30,
               "the reject records")
    assert run.stop(signal.SIGTERM) == 0

    lines = log.read_text(encoding="utf-8").split("\n")[:-1]
    limit = 4096  # REJECT_LOG_MAX_VALUE_BYTES's default
    by_offset = {int(line.split("\t")[2].rsplit("/", 1)[1]): line for line in lines}
    for offset, value in enumerate(junk):
        line = by_offset[offset] + "\n"
        # At most the kept bytes, each shown in at most 6 characters (\u0000), plus the rest.
        assert len(line.encode("utf-8")) <= 6 * limit + 400, offset
        _, _, _, _, shown, length, sha256 = fields(line)
        assert (int(length), sha256) == (len(value), hashlib.sha256(value).hexdigest())
        kept = shown_bytes(shown)
        assert kept is not None and value.startswith(kept) and limit - 4 < len(kept) <= limit
