-- What holds no data: the rollup trigger, the views, the roles and their grants. Re-runnable on
-- a database at any schema version: applied after schema.sql on a new database and again after
-- every migration (so a view is changed here, never in a migration).

DROP VIEW IF EXISTS v_rating, v_request, v_exhibition_hourly, v_exhibition_daily,
    v_rejects_daily, exhibition_hour_counts CASCADE;

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

-- Only the schema's owner creates objects in public. PostgreSQL 14 and older (and databases
-- upgraded from them) let every role create there, so a reader could plant a function or an
-- operator that a statement run as another role would pick up. Revoked first, before this file
-- calls anything: below, every call is schema-qualified or has an exact match in pg_catalog
-- (searched first), and what another role planted before is never called (museum_zone()).
REVOKE CREATE ON SCHEMA public FROM PUBLIC, lmnh_writer, lmnh_reader;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_catalog.pg_namespace AS n,
                   pg_catalog.aclexplode(coalesce(n.nspacl, pg_catalog.acldefault('n', n.nspowner))) AS a
               WHERE n.nspname = 'public' AND a.grantee = 0 AND a.privilege_type = 'CREATE') THEN
        RAISE EXCEPTION 'every role may still create objects in schema public'
            USING HINT = 'run this as the owner of schema public (or a superuser)';
    END IF;
END
$$;

-- The museum's zone, from museum_settings, baked into museum_zone() as a constant: IMMUTABLE,
-- so the planner folds it into the views, the trigger and the index below exactly as it folded
-- the literal zone before (no table read per row, and the index is usable). That is
-- true only while the row is unchanged, so the row changes only through reset_database.sh and
-- migrate.py, which re-apply this file: when the zone differs from the one baked before, the
-- index by local day is rebuilt and the hourly rollups are recounted from the stored rows.
DO $$
DECLARE
    zone TEXT := (SELECT time_zone FROM public.museum_settings);
    existing regprocedure := pg_catalog.to_regprocedure('public.museum_zone()');
    baked TEXT;
    recount BOOLEAN := false;
BEGIN
    IF existing IS NOT NULL THEN
        IF (SELECT proowner FROM pg_catalog.pg_proc WHERE oid = existing)
                = (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
            EXECUTE 'SELECT public.museum_zone()' INTO baked;
        ELSE
            -- Another role's (planted while every role could create in public): never run
            -- as this role, never kept (CREATE OR REPLACE would keep its owner). What it was
            -- baked with is unknown, so the rollups are recounted.
            DROP FUNCTION public.museum_zone() CASCADE;
            recount := true;
        END IF;
    END IF;
    -- No name in its body to look up: it runs with pg_catalog alone all the same.
    EXECUTE pg_catalog.format(
        'CREATE OR REPLACE FUNCTION public.museum_zone() RETURNS TEXT LANGUAGE sql'
        ' IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS %L',
        pg_catalog.format('SELECT %L::text', zone));
    IF baked IS DISTINCT FROM zone THEN
        DROP INDEX IF EXISTS public.rejected_message_local_date_idx;
    END IF;
    IF recount OR (baked IS NOT NULL AND baked <> zone) THEN
        TRUNCATE public.rating_hourly, public.request_hourly;
        INSERT INTO public.rating_hourly (local_date, exhibition_id, local_hour, rating_value, ratings)
        SELECT (event_at AT TIME ZONE zone)::date, exhibition_id,
               extract(hour FROM event_at AT TIME ZONE zone), rating_value, pg_catalog.count(*)
        FROM public.rating_interaction GROUP BY 1, 2, 3, 4;
        INSERT INTO public.request_hourly (local_date, exhibition_id, local_hour, request_value, requests)
        SELECT (event_at AT TIME ZONE zone)::date, exhibition_id,
               extract(hour FROM event_at AT TIME ZONE zone), request_value, pg_catalog.count(*)
        FROM public.request_interaction GROUP BY 1, 2, 3, 4;
        RAISE NOTICE 'museum time zone changed from % to %: hourly rollups recounted',
            coalesce(baked, 'unknown'), zone;
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS rejected_message_local_date_idx
    ON public.rejected_message (((rejected_at AT TIME ZONE public.museum_zone())::date));

-- Counts the rows a statement (COPY or INSERT) really inserted into the rollup named by the
-- trigger's arguments (rollup table, value column, count column), in the same transaction: a
-- row that ON CONFLICT skipped is not in new_rows, so a replay adds nothing. One aggregate per
-- statement: rows are first counted per quarter hour of UTC (no time-zone work per row), then
-- each quarter is placed in museum time. Every zone's offset is a whole number of quarter hours
-- (Asia/Kolkata +5:30, Asia/Kathmandu +5:45), so a quarter never straddles two local hours, as
-- a UTC hour would; several quarters (and the autumn change's repeated hour) map onto one local
-- hour, hence the second GROUP BY. Groups are written in key order, so concurrent writers cannot
-- deadlock.
-- SECURITY DEFINER: the writer role inserts rows; only this function touches the rollups. So that
-- no other role can make it run their code as its owner, it searches only pg_catalog (and
-- pg_temp last, where functions and operators are never looked up), names every table and
-- function by its schema and types every literal: an untyped '1 hour' once let a public.date_bin
-- (text, ...) planted by another role win over pg_catalog's date_bin(interval, ...).
CREATE OR REPLACE FUNCTION public.count_into_hourly() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE pg_catalog.format($query$
        INSERT INTO public.%1$I AS rollup (local_date, exhibition_id, local_hour, %2$I, %3$I)
        SELECT (quarter_start AT TIME ZONE public.museum_zone())::pg_catalog.date, exhibition_id,
               extract(hour FROM quarter_start AT TIME ZONE public.museum_zone()),
               %2$I, pg_catalog.sum(presses)
        FROM (SELECT pg_catalog.date_bin(INTERVAL '15 minutes', event_at,
                                         TIMESTAMPTZ '2000-01-01 00:00+00') AS quarter_start,
                     exhibition_id, %2$I, pg_catalog.count(*) AS presses
              FROM new_rows GROUP BY 1, 2, 3) AS per_utc_quarter
        GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
        ON CONFLICT (local_date, exhibition_id, local_hour, %2$I)
        DO UPDATE SET %3$I = rollup.%3$I + EXCLUDED.%3$I
        $query$, TG_ARGV[0], TG_ARGV[1], TG_ARGV[2]);
    RETURN NULL;
END
$$;
-- Only the triggers below call it.
REVOKE ALL ON FUNCTION public.count_into_hourly() FROM PUBLIC;

DROP TRIGGER IF EXISTS rating_interaction_hourly ON public.rating_interaction;
DROP TRIGGER IF EXISTS request_interaction_hourly ON public.request_interaction;
CREATE TRIGGER rating_interaction_hourly AFTER INSERT ON public.rating_interaction
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION public.count_into_hourly('rating_hourly', 'rating_value', 'ratings');
CREATE TRIGGER request_interaction_hourly AFTER INSERT ON public.request_interaction
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION public.count_into_hourly('request_hourly', 'request_value', 'requests');

-- ---------------------------------------------------------------- views for Tableau and SQL
-- Stable names and columns: workbooks use these, so the tables underneath may change.
-- Museum-local times are in museum_zone(), the zone of museum_settings (the kiosks' clock).

-- One row per rating, flattened.
CREATE VIEW v_rating AS
SELECT ri.event_at                                                 AS event_at_utc,
       ri.event_at AT TIME ZONE museum_zone()                    AS event_at_local,
       (ri.event_at AT TIME ZONE museum_zone())::date            AS local_date,
       extract(hour FROM ri.event_at AT TIME ZONE museum_zone())::int AS local_hour,
       extract(isodow FROM ri.event_at AT TIME ZONE museum_zone())::int AS local_weekday,
       e.public_id                                                 AS exhibition_id,
       e.exhibition_name,
       f.floor_name                                                AS floor,
       d.department_name                                           AS department,
       ri.rating_value,
       r.rating_description
FROM rating_interaction ri
JOIN exhibition e USING (exhibition_id)
JOIN floor f USING (floor_id)
JOIN department d USING (department_id)
JOIN rating r USING (rating_value);

-- One row per assistance or emergency request, flattened. alert_sent_at: when SNS accepted the
-- emergency's alert (NULL while pending, and for assistance or presses stored before alerts
-- were recorded); alert_pending: an emergency whose alert is neither sent yet nor given up;
-- alert_failed_at, alert_failure: when and why SNS refused the alert for good (it was never
-- delivered and is not retried).
CREATE VIEW v_request AS
SELECT qi.event_at                                                 AS event_at_utc,
       qi.event_at AT TIME ZONE museum_zone()                    AS event_at_local,
       (qi.event_at AT TIME ZONE museum_zone())::date            AS local_date,
       extract(hour FROM qi.event_at AT TIME ZONE museum_zone())::int AS local_hour,
       extract(isodow FROM qi.event_at AT TIME ZONE museum_zone())::int AS local_weekday,
       e.public_id                                                 AS exhibition_id,
       e.exhibition_name,
       f.floor_name                                                AS floor,
       d.department_name                                           AS department,
       qi.request_value,
       q.request_description,
       qi.request_value = 1                                        AS is_emergency,
       a.sent_at                                                   AS alert_sent_at,
       coalesce(qi.request_value = 1 AND a.sent_at IS NULL AND a.failed_at IS NULL
                AND a.source IS NOT NULL, false)                   AS alert_pending,
       a.failed_at                                                 AS alert_failed_at,
       a.failure                                                   AS alert_failure
FROM request_interaction qi
JOIN exhibition e USING (exhibition_id)
JOIN floor f USING (floor_id)
JOIN department d USING (department_id)
JOIN request q USING (request_value)
LEFT JOIN emergency_alert a ON (a.source, a.source_partition, a.source_offset)
                             = (qi.source, qi.source_partition, qi.source_offset);

-- Presses per exhibition, museum-local day and hour from both rollups, by their integer keys:
-- what the two views below group and name. Small whatever the size of the interaction tables.
CREATE VIEW exhibition_hour_counts AS
SELECT exhibition_id, local_date, local_hour,
       sum(ratings) AS ratings, sum(ratings * rating_value) AS rating_sum,
       coalesce(sum(ratings) FILTER (WHERE rating_value = 0), 0) AS terrible,
       coalesce(sum(ratings) FILTER (WHERE rating_value = 1), 0) AS bad,
       coalesce(sum(ratings) FILTER (WHERE rating_value = 2), 0) AS neutral,
       coalesce(sum(ratings) FILTER (WHERE rating_value = 3), 0) AS good,
       coalesce(sum(ratings) FILTER (WHERE rating_value = 4), 0) AS amazing,
       0 AS assistance, 0 AS emergency
FROM rating_hourly GROUP BY 1, 2, 3
UNION ALL
SELECT exhibition_id, local_date, local_hour, 0, 0, 0, 0, 0, 0, 0,
       coalesce(sum(requests) FILTER (WHERE request_value = 0), 0),
       coalesce(sum(requests) FILTER (WHERE request_value = 1), 0)
FROM request_hourly GROUP BY 1, 2, 3;

-- Per exhibition, museum-local day and hour: the counts both dashboards start from. Grouped by
-- the integer keys first, named after: naming every hour first made an all-time read slow.
CREATE VIEW v_exhibition_hourly AS
SELECT e.public_id AS exhibition_id, e.exhibition_name, f.floor_name AS floor,
       d.department_name AS department, c.local_date,
       extract(isodow FROM c.local_date)::int AS local_weekday, c.local_hour::int AS local_hour,
       c.ratings::bigint AS ratings,
       round(c.rating_sum::numeric / nullif(c.ratings, 0), 3) AS mean_rating,
       round(c.terrible::numeric / nullif(c.ratings, 0), 4) AS share_terrible,
       round(c.bad::numeric / nullif(c.ratings, 0), 4) AS share_bad,
       round(c.neutral::numeric / nullif(c.ratings, 0), 4) AS share_neutral,
       round(c.good::numeric / nullif(c.ratings, 0), 4) AS share_good,
       round(c.amazing::numeric / nullif(c.ratings, 0), 4) AS share_amazing,
       c.assistance::bigint AS assistance, c.emergency::bigint AS emergency,
       -- Beside every ratio, its parts (added last: workbooks name columns): a mean or share over
       -- any period is SUM(part) / SUM(ratings), never an average of the rows' ratios.
       c.rating_sum::bigint AS rating_sum, c.terrible::bigint AS n_terrible,
       c.bad::bigint AS n_bad, c.neutral::bigint AS n_neutral, c.good::bigint AS n_good,
       c.amazing::bigint AS n_amazing,
       -- The museum-local week (its Monday), so weekly trends need no locale's idea of a week.
       pg_catalog.date_trunc('week', c.local_date)::date AS local_week
FROM (SELECT exhibition_id, local_date, local_hour, sum(ratings) AS ratings,
             sum(rating_sum) AS rating_sum, sum(terrible) AS terrible, sum(bad) AS bad,
             sum(neutral) AS neutral, sum(good) AS good, sum(amazing) AS amazing,
             sum(assistance) AS assistance, sum(emergency) AS emergency
      FROM exhibition_hour_counts GROUP BY 1, 2, 3) AS c
JOIN exhibition e USING (exhibition_id)
JOIN floor f USING (floor_id)
JOIN department d USING (department_id);

-- Per exhibition and museum-local day: the same counts, for trends.
CREATE VIEW v_exhibition_daily AS
SELECT e.public_id AS exhibition_id, e.exhibition_name, f.floor_name AS floor,
       d.department_name AS department, c.local_date,
       c.ratings::bigint AS ratings,
       round(c.rating_sum::numeric / nullif(c.ratings, 0), 3) AS mean_rating,
       round(c.terrible::numeric / nullif(c.ratings, 0), 4) AS share_terrible,
       round(c.bad::numeric / nullif(c.ratings, 0), 4) AS share_bad,
       round(c.neutral::numeric / nullif(c.ratings, 0), 4) AS share_neutral,
       round(c.good::numeric / nullif(c.ratings, 0), 4) AS share_good,
       round(c.amazing::numeric / nullif(c.ratings, 0), 4) AS share_amazing,
       c.assistance::bigint AS assistance, c.emergency::bigint AS emergency,
       -- Beside every ratio, its parts (added last: workbooks name columns): a mean or share over
       -- any period is SUM(part) / SUM(ratings), never an average of the rows' ratios.
       c.rating_sum::bigint AS rating_sum, c.terrible::bigint AS n_terrible,
       c.bad::bigint AS n_bad, c.neutral::bigint AS n_neutral, c.good::bigint AS n_good,
       c.amazing::bigint AS n_amazing,
       -- The museum-local week (its Monday), so weekly trends need no locale's idea of a week.
       pg_catalog.date_trunc('week', c.local_date)::date AS local_week
FROM (SELECT exhibition_id, local_date, sum(ratings) AS ratings,
             sum(rating_sum) AS rating_sum, sum(terrible) AS terrible, sum(bad) AS bad,
             sum(neutral) AS neutral, sum(good) AS good, sum(amazing) AS amazing,
             sum(assistance) AS assistance, sum(emergency) AS emergency
      FROM exhibition_hour_counts GROUP BY 1, 2) AS c
JOIN exhibition e USING (exhibition_id)
JOIN floor f USING (floor_id)
JOIN department d USING (department_id);

-- Rejected messages per museum-local day and reason: the data-quality picture.
CREATE VIEW v_rejects_daily AS
SELECT (rejected_at AT TIME ZONE museum_zone())::date AS local_date, reason,
       count(*)::bigint AS rejected
FROM rejected_message
GROUP BY 1, 2;

-- What each role needs, and nothing else: what an earlier version granted is taken back first,
-- so the grants below are the whole list (add a new grant after them).
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM lmnh_writer, lmnh_reader;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM lmnh_writer, lmnh_reader;
GRANT USAGE ON SCHEMA public TO lmnh_writer, lmnh_reader;
-- Tables and views alike: the reader reads everything and writes nothing.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO lmnh_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO lmnh_writer;
GRANT INSERT, UPDATE ON department, floor, exhibition TO lmnh_writer;
GRANT INSERT ON rating_interaction, request_interaction, rejected_message TO lmnh_writer;
GRANT INSERT, UPDATE ON emergency_alert, source_progress TO lmnh_writer;
GRANT INSERT, UPDATE ON topic_source TO lmnh_writer;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO lmnh_writer;
