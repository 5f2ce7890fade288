"""migrations/0004: the department and floor identities a database spent on upserts (issue 21,
fault 3) are given back, and a database whose identity ran out takes new ones again."""

from __future__ import annotations

from datetime import date, time

import psycopg2
import pytest
from conftest import Database
from test_exhibition_upsert import MAX_IDS, SEQUENCES, SIX

import db
from s3_metadata import Exhibition

CLOCK = db.MuseumClock("Europe/London", time(8, 45), time(18, 15))
NEW = Exhibition(6, "EXH_06", "Mammoths", "Mezzanine", "Glaciology", date(2026, 1, 5), "Ice.")
NEWER = Exhibition(7, "EXH_07", "Meteorites", "Roof", "Astronomy", date(2026, 2, 1), "Rocks.")


@pytest.mark.parametrize("spent_to", [20000, 32767])  # partly and wholly used up
def test_spent_identities_are_given_back(database: Database, spent_to: int) -> None:
    # The previous release's schema (version 3): without what migrations 0005 and 0006 add.
    database.execute("ALTER TABLE emergency_alert DROP COLUMN failed_at CASCADE,"
                     " DROP COLUMN failure CASCADE")
    database.execute("DROP TABLE topic_source")
    database.execute("UPDATE schema_version SET version = 3")
    conn = psycopg2.connect(database.url)
    try:
        assert db.upsert_exhibitions(conn, SIX).refused == ()
        # What years of restarts spent: the values up to `spent_to` are gone.
        database.execute("SELECT setval('department_department_id_seq', %s),"
                         " setval('floor_floor_id_seq', %s)", (spent_to, spent_to))
        spent = db.upsert_exhibitions(conn, [*SIX, NEW])
        if spent_to == 32767:  # used up: only a new department or floor is refused
            assert [e for e, _ in spent.refused] == [NEW]
            assert "reached maximum value" in spent.refused[0][1]
        else:
            assert spent.refused == ()
        found, applied = db.migrate(conn, CLOCK)
        assert (found, applied[0]) == (3, 4)
        # Each identity is back at the highest value stored.
        assert database.query(SEQUENCES) == database.query(MAX_IDS)
        after = db.upsert_exhibitions(conn, [*SIX, NEW, NEWER])
    finally:
        conn.close()
    assert after.refused == () and sorted(after.held) == [0, 1, 2, 3, 4, 5, 6, 7]
    ids = dict(database.query("SELECT exhibition_id, (department_id, floor_id)::text"
                              " FROM exhibition WHERE exhibition_id IN (6, 7)"))
    new, newer = (tuple(map(int, ids[n].strip("()").split(","))) for n in (6, 7))
    assert newer == (new[0] + 1, new[1] + 1)  # the next values, none spent in between
    assert database.query(SEQUENCES) == database.query(MAX_IDS)
