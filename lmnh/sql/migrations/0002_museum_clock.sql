-- Release 1 -> 2: the museum's clock moves from literals in the views and the trigger into a
-- one-row table (migrate.py then writes it from the settings), and the schema gets a version.
-- The index by museum-local day is re-created by schema_views.sql, for the zone in the table.

CREATE TABLE museum_settings (
    only_row     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    time_zone    TEXT NOT NULL
        CHECK ((TIMESTAMPTZ '2000-01-01 00:00+00' AT TIME ZONE time_zone) IS NOT NULL),
    opening_time TIME NOT NULL,
    closing_time TIME NOT NULL CHECK (closing_time > opening_time)
);
-- What release 1 wrote into its views and trigger, so the stored rollups still agree.
INSERT INTO museum_settings VALUES (DEFAULT, 'Europe/London', '08:45', '18:15');

CREATE TABLE schema_version (
    version    INTEGER PRIMARY KEY CHECK (version >= 1),
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO schema_version (version) VALUES (1);

DROP INDEX rejected_message_local_date_idx;
