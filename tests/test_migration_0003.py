"""migrations/0003: a database built by the previous schema gains the alert outbox and the
progress marks in place, keeping every row, and its stored messages count as judged."""

from __future__ import annotations

from datetime import UTC, date, datetime

import psycopg2
from conftest import Database

import db
from s3_metadata import Exhibition

AT = datetime(2026, 7, 15, 11, 0, tzinfo=UTC)


def test_migration_0003_upgrades_in_place(database: Database) -> None:
    # The previous release's tables: today's, without the two this migration adds and the one
    # a later migration adds.
    database.execute("DROP TABLE emergency_alert, source_progress, topic_source CASCADE")
    conn = psycopg2.connect(database.url)
    db.upsert_exhibitions(conn, [Exhibition(3, "EXH_03", "Whales", "1", "Zoology",
                                            date(2019, 7, 1), "x")])
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO rating_interaction VALUES (3, 4, %s, 'lmnh', 0, 7),"
                    " (3, 2, %s, 'lmnh', 1, 3)", (AT, AT))
        cur.execute("INSERT INTO request_interaction VALUES (3, 1, %s, 'lmnh', 0, 9)", (AT,))
        cur.execute("INSERT INTO rejected_message VALUES ('invalid_val', %s, 'lmnh', 1, 12)",
                    (AT,))
    with conn, conn.cursor() as cur:
        for version, path in db.migrations().items():  # 0003, then the later ones
            if version >= 3:
                cur.execute(path.read_text())
        cur.execute(db.SCHEMA_FILES[1].read_text())
    conn.close()

    assert database.query("SELECT source, source_partition, next_offset FROM source_progress"
                          " ORDER BY 2") == [("lmnh", 0, 10), ("lmnh", 1, 13)]
    assert database.scalar("SELECT count(*) FROM rating_interaction") == 2
    # Emergencies stored before the release were alerted by the old code: none is pending.
    assert database.query("SELECT is_emergency, alert_sent_at, alert_pending FROM v_request") \
        == [(True, None, False)]
