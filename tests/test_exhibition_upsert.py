"""db.upsert_exhibitions on a real database: repeated upserts spend no identity value (issue 21,
fault 3), `held` is what the database holds (fault 2), and two writers at once both succeed."""

from __future__ import annotations

import random
import string
import threading
from datetime import date

import psycopg2
from conftest import Database

import db
from s3_metadata import Exhibition

SIX = [
    Exhibition(0, "EXH_00", "Measureless to Man", "1", "Geology", date(2021, 8, 23), "Caves."),
    Exhibition(1, "EXH_01", "Adaptation", "Vault", "Entomology", date(2019, 7, 1), "Insects."),
    Exhibition(2, "EXH_02", "The Crenshaw Collection", "2", "Zoology", date(2021, 3, 3), "Art."),
    Exhibition(3, "EXH_03", "Cetacean Sensations", "1", "Zoology", date(2019, 7, 1), "Whales."),
    Exhibition(4, "EXH_04", "Our Polluted World", "3", "Ecology", date(2021, 5, 12), "Plastic."),
    Exhibition(5, "EXH_05", "Thunder Lizards", "1", "Paleontology", date(2023, 2, 1), "Dinos."),
]
SEQUENCES = """SELECT sequencename, last_value FROM pg_sequences
               WHERE schemaname = 'public' AND sequencename IN
                   ('department_department_id_seq', 'floor_floor_id_seq') ORDER BY 1"""
# Too long for the unique index on department_name (at most about 2700 bytes), and incompressible.
TOO_LONG = "".join(random.Random(21).choices(string.ascii_letters, k=9000))
MAX_IDS = """SELECT 'department_department_id_seq', max(department_id) FROM department
             UNION ALL SELECT 'floor_floor_id_seq', max(floor_id) FROM floor ORDER BY 1"""


def test_repeated_upserts_spend_no_identity_value(database: Database) -> None:
    conn = psycopg2.connect(database.url)
    try:
        assert db.upsert_exhibitions(conn, SIX).refused == ()
        first = database.query(SEQUENCES)
        # Every department and floor took exactly one value: 5 departments, 4 floors.
        assert first == database.query(MAX_IDS) == [
            ("department_department_id_seq", 5), ("floor_floor_id_seq", 4)]
        for _ in range(50):  # 50 starts or refreshes of the same metadata
            assert db.upsert_exhibitions(conn, SIX).refused == ()
    finally:
        conn.close()
    assert database.query(SEQUENCES) == first


def test_held_is_what_the_database_holds_after_the_upsert(database: Database) -> None:
    conn = psycopg2.connect(database.url)
    try:
        db.upsert_exhibitions(conn, SIX[:4])
        renamed = Exhibition(3, "EXH_03", "Sharks", "2", "Zoology", date(2020, 1, 1), "Fish.")
        too_long = Exhibition(6, "EXH_06", "Mammoths", "2", TOO_LONG, date(2021, 1, 1), "Ice.")
        too_big = Exhibition(40000, "EXH_40000", "Moon", "2", "Space", date(2021, 1, 1), "Far.")
        result = db.upsert_exhibitions(conn, [*SIX[:3], renamed, too_long, too_big, SIX[5]])
    finally:
        conn.close()
    assert [exhibition for exhibition, _ in result.refused] == [too_long, too_big]
    assert [c.new for c in result.conflicts] == [renamed]
    # The refused are not held; the conflicting number is held as stored, not as the metadata.
    assert sorted(result.held) == [0, 1, 2, 3, 5]
    assert result.held[3] == SIX[3]
    assert result.held[0] == SIX[0] and result.held[5] == SIX[5]
    assert database.scalar("SELECT count(*) FROM exhibition") == 5


def _upsert_into(results: list[db.UpsertResult], conn: db.Connection,
                 exhibition: Exhibition) -> None:
    results.append(db.upsert_exhibitions(conn, [exhibition]))


def test_two_writers_adding_one_department_at_once_both_succeed(database: Database) -> None:
    """The other writer's department is not committed yet when the upsert looks for it: the
    upsert waits for it, then uses it (or inserts its own if the other rolls back)."""
    for number, outcome in ((7, "commit"), (8, "rollback")):
        other = psycopg2.connect(database.url)
        conn = psycopg2.connect(database.url)
        name = f"Botany-{outcome}"
        new = Exhibition(number, f"EXH_0{number}", "Ferns", "1", name, date(2024, 1, 1), "Green.")
        results: list[db.UpsertResult] = []
        try:
            with other.cursor() as cur:
                cur.execute("INSERT INTO department (department_name) VALUES (%s)", (name,))
            worker = threading.Thread(target=_upsert_into, args=(results, conn, new))
            worker.start()
            worker.join(1)
            assert worker.is_alive()  # waiting on the other writer's row
            other.commit() if outcome == "commit" else other.rollback()
            worker.join(30)
            assert not worker.is_alive()
        finally:
            other.close()
            conn.close()
        assert results[0].refused == () and results[0].held == {number: new}, outcome
        assert database.scalar(
            "SELECT d.department_name FROM exhibition JOIN department d USING (department_id)"
            " WHERE exhibition_id = %s", (number,)) == name
