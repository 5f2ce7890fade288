-- The LMNH kiosk database's tables. Run whole, then schema_views.sql (reset_database.sh and
-- db.apply_schema do both): it drops and recreates every table the pipeline owns.
-- What is here holds data, so an existing database changes only through migrations/;
-- schema_views.sql holds what holds no data (functions, triggers, views, roles, grants) and is
-- re-applied whole after every migration.

-- First, before anything is created or run: no role but the schema's owner creates objects in
-- public (PostgreSQL 14's default let every role; schema_views.sql revokes it from the kiosk
-- roles too and checks).
REVOKE CREATE ON SCHEMA public FROM PUBLIC;

DROP TABLE IF EXISTS rating_interaction, request_interaction, rejected_message, rating_hourly,
    request_hourly, exhibition, department, floor, rating, request, museum_settings,
    schema_version, emergency_alert, source_progress, topic_source CASCADE;

CREATE TABLE department (
    department_id   SMALLINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    department_name TEXT NOT NULL UNIQUE
);

CREATE TABLE floor (
    floor_id   SMALLINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    floor_name TEXT NOT NULL UNIQUE
);

-- exhibition_id is the kiosk site number: site "4" belongs to public_id 'EXH_04'.
CREATE TABLE exhibition (
    exhibition_id          SMALLINT PRIMARY KEY CHECK (exhibition_id >= 0),
    public_id              TEXT NOT NULL UNIQUE,
    exhibition_name        TEXT NOT NULL,
    exhibition_description TEXT NOT NULL,
    start_date             DATE NOT NULL,
    department_id          SMALLINT NOT NULL REFERENCES department,
    floor_id               SMALLINT NOT NULL REFERENCES floor
);

CREATE TABLE rating (
    rating_value       SMALLINT PRIMARY KEY CHECK (rating_value BETWEEN 0 AND 4),
    rating_description TEXT NOT NULL UNIQUE
);
INSERT INTO rating VALUES (0, 'Terrible'), (1, 'Bad'), (2, 'Neutral'), (3, 'Good'), (4, 'Amazing');

CREATE TABLE request (
    request_value       SMALLINT PRIMARY KEY CHECK (request_value BETWEEN 0 AND 1),
    request_description TEXT NOT NULL UNIQUE
);
INSERT INTO request VALUES (0, 'Assistance'), (1, 'Emergency');

-- Every interaction records where it came from, and that is its primary key, so a replayed
-- message is refused (COPY) or skipped (INSERT ... ON CONFLICT DO NOTHING).
-- Kafka: source = topic, source_partition = partition, source_offset = offset.
-- Backfill: source = 's3://bucket/key', source_partition = 0, source_offset = line number.
-- Rows arrive in time order, so a BRIN index serves time ranges at almost no cost per insert.
-- exhibition_id has no per-row foreign key (that lookup cost more than the rest of the insert):
-- the statement trigger below counts every new row into the hourly rollup, whose foreign key
-- to exhibition fails the whole statement if any row names an unknown exhibition.
CREATE TABLE rating_interaction (
    exhibition_id    SMALLINT NOT NULL,
    rating_value     SMALLINT NOT NULL CHECK (rating_value BETWEEN 0 AND 4),
    event_at         TIMESTAMPTZ NOT NULL,
    source           TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL,
    PRIMARY KEY (source, source_partition, source_offset)
);

CREATE TABLE request_interaction (
    exhibition_id    SMALLINT NOT NULL,
    request_value    SMALLINT NOT NULL CHECK (request_value BETWEEN 0 AND 1),
    event_at         TIMESTAMPTZ NOT NULL,
    source           TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL,
    PRIMARY KEY (source, source_partition, source_offset)
);

-- Every message the pipeline rejected (the raw value stays in erroneous_data.log), for the
-- data-quality picture. Same key: a replay records nothing twice.
CREATE TABLE rejected_message (
    reason           TEXT NOT NULL,
    rejected_at      TIMESTAMPTZ NOT NULL,
    source           TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL,
    PRIMARY KEY (source, source_partition, source_offset)
);

CREATE INDEX rating_interaction_event_at_idx ON rating_interaction USING brin (event_at);
CREATE INDEX request_interaction_event_at_idx ON request_interaction USING brin (event_at);
-- rejected_message's index by museum-local day is in schema_views.sql: it follows the zone.

-- Rollups: presses per exhibition, museum-local hour and value. The dashboards' daily and
-- hourly views read these, not the millions of interaction rows.
CREATE TABLE rating_hourly (
    exhibition_id SMALLINT NOT NULL REFERENCES exhibition,
    local_date    DATE NOT NULL,
    local_hour    SMALLINT NOT NULL CHECK (local_hour BETWEEN 0 AND 23),
    rating_value  SMALLINT NOT NULL REFERENCES rating,
    ratings       BIGINT NOT NULL,
    PRIMARY KEY (local_date, exhibition_id, local_hour, rating_value)
);

CREATE TABLE request_hourly (
    exhibition_id SMALLINT NOT NULL REFERENCES exhibition,
    local_date    DATE NOT NULL,
    local_hour    SMALLINT NOT NULL CHECK (local_hour BETWEEN 0 AND 23),
    request_value SMALLINT NOT NULL REFERENCES request,
    requests      BIGINT NOT NULL,
    PRIMARY KEY (local_date, exhibition_id, local_hour, request_value)
);

-- The museum's clock: one row, the one place the views, the rollup trigger and the dashboard
-- take the time zone and opening hours from. reset_database.sh and migrate.py write it from
-- MUSEUM_TIMEZONE, OPENING_TIME and CLOSING_TIME, then re-apply schema_views.sql (which bakes
-- the zone into museum_zone() and recounts the rollups if it changed); change it only so.
CREATE TABLE museum_settings (
    only_row     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    time_zone    TEXT NOT NULL
        CHECK ((TIMESTAMPTZ '2000-01-01 00:00+00' AT TIME ZONE time_zone) IS NOT NULL),
    opening_time TIME NOT NULL,
    closing_time TIME NOT NULL CHECK (closing_time > opening_time)
);
INSERT INTO museum_settings VALUES (DEFAULT, 'Europe/London', '08:45', '18:15');

-- Which migrations (migrations/NNNN_name.sql) this database has: its schema version is the
-- highest. A database of the first release has no such table and is version 1. A migration
-- that changes a table above also raises the version inserted here.
CREATE TABLE schema_version (
    version    INTEGER PRIMARY KEY CHECK (version >= 1),
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO schema_version (version) VALUES (6);

-- Emergency alerts, recorded with the press (same transaction) and marked when SNS accepts the
-- message: sent_at is NULL while the alert is pending. One SNS refuses for good (a parameter it
-- rejects) is given up: failed_at and failure say when and why, and it is not re-sent. The
-- words are stored, so an alert sent after a restart says what the first attempt would have
-- said. Same source key as the press.
CREATE TABLE emergency_alert (
    source           TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL,
    pressed_at       TIMESTAMPTZ NOT NULL,
    subject          TEXT NOT NULL,
    message          TEXT NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at          TIMESTAMPTZ,
    failed_at        TIMESTAMPTZ,
    failure          TEXT,
    PRIMARY KEY (source, source_partition, source_offset),
    CONSTRAINT emergency_alert_failure_check CHECK ((failed_at IS NULL) = (failure IS NULL))
);
CREATE INDEX emergency_alert_pending_idx ON emergency_alert (pressed_at) WHERE sent_at IS NULL;

-- One verdict per message: every message of a source's partition below next_offset has been
-- judged and its verdict stored (in exactly one of the three tables above). Each batch locks
-- and advances its partitions' rows in its own transaction; a message below the mark is
-- written only if no table holds it yet (a message the consumer once skipped).
CREATE TABLE source_progress (
    source           TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    next_offset      BIGINT NOT NULL,
    PRIMARY KEY (source, source_partition)
);

-- Each Kafka topic's current incarnation: the source its messages are stored under now. A topic
-- deleted and created again restarts its offsets at 0; read under the old source's high marks,
-- its presses would count as judged before. The pipeline, at partition assignment, starts a new
-- incarnation (source 'topic~n') when a partition ends below its mark. No row: the topic's
-- first incarnation, stored under its own name.
CREATE TABLE topic_source (
    topic       TEXT PRIMARY KEY,
    source      TEXT NOT NULL UNIQUE,
    incarnation INTEGER NOT NULL CHECK (incarnation >= 1),
    changed_at  TIMESTAMPTZ
);
