-- 0006: each Kafka topic's incarnation and the source its messages are stored under (issue 21,
-- fault 8: a recreated topic restarts its offsets at 0 under the old, high progress marks).
-- No rows: a topic without one is in its first incarnation, stored under its own name, as every
-- row stored before this release is. Then schema_views.sql is re-applied (the writer's grant).

CREATE TABLE topic_source (
    topic       TEXT PRIMARY KEY,
    source      TEXT NOT NULL UNIQUE,
    incarnation INTEGER NOT NULL CHECK (incarnation >= 1),
    changed_at  TIMESTAMPTZ
);
