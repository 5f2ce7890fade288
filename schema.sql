-- The LMNH kiosk database. Run whole (reset_database.sh does): it drops and recreates
-- everything the pipeline owns. Roles are cluster-wide and are created only if missing;
-- their passwords are set by an administrator, never here (see README "Roles").

DROP TABLE IF EXISTS rating_interaction, request_interaction, exhibition, department, floor,
    rating, request CASCADE;

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

-- Every interaction records where it came from, and the unique constraint makes a replayed
-- message a no-op. Kafka: source = topic, source_partition = partition, source_offset = offset.
-- Backfill: source = 's3://bucket/key', source_partition = 0, source_offset = line number.
CREATE TABLE rating_interaction (
    rating_interaction_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exhibition_id         SMALLINT NOT NULL REFERENCES exhibition,
    rating_value          SMALLINT NOT NULL REFERENCES rating,
    event_at              TIMESTAMPTZ NOT NULL,
    source                TEXT NOT NULL,
    source_partition      INTEGER NOT NULL,
    source_offset         BIGINT NOT NULL,
    CONSTRAINT rating_interaction_source_key UNIQUE (source, source_partition, source_offset)
);

CREATE TABLE request_interaction (
    request_interaction_id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    exhibition_id          SMALLINT NOT NULL REFERENCES exhibition,
    request_value          SMALLINT NOT NULL REFERENCES request,
    event_at               TIMESTAMPTZ NOT NULL,
    source                 TEXT NOT NULL,
    source_partition       INTEGER NOT NULL,
    source_offset          BIGINT NOT NULL,
    CONSTRAINT request_interaction_source_key UNIQUE (source, source_partition, source_offset)
);

-- The dashboards slice by time, and by exhibition over time.
CREATE INDEX rating_interaction_event_at_idx ON rating_interaction (event_at);
CREATE INDEX rating_interaction_exhibition_event_at_idx ON rating_interaction (exhibition_id, event_at);
CREATE INDEX request_interaction_event_at_idx ON request_interaction (event_at);
CREATE INDEX request_interaction_exhibition_event_at_idx ON request_interaction (exhibition_id, event_at);

-- Roles without passwords: lmnh_writer for the pipeline, lmnh_reader for Tableau.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_writer') THEN
        CREATE ROLE lmnh_writer LOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lmnh_reader') THEN
        CREATE ROLE lmnh_reader LOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA public TO lmnh_writer, lmnh_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO lmnh_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO lmnh_writer;
GRANT INSERT, UPDATE ON department, floor, exhibition TO lmnh_writer;
GRANT INSERT ON rating_interaction, request_interaction TO lmnh_writer;
