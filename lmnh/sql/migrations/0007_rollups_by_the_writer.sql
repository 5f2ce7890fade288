-- 0007: the writer adds each batch's counts to the rollups (issue 23), and rejects get a daily
-- rollup. Upgrades a database built by the previous schema.sql in place, keeping every row;
-- then schema_views.sql is re-applied (v_rejects_daily reads the new rollup; the writer's
-- grants on the rollups).
--
-- The statement triggers grouped every inserted row on the server, a tenth of a batch's write;
-- the judging process now counts the rows as it encodes them, and db.write_interactions adds
-- the counts in the transaction that stores the rows. The index of rejected_message by local
-- day (an expression evaluated per row) gives way to rejected_daily, which the dashboard reads.

DROP TRIGGER IF EXISTS rating_interaction_hourly ON rating_interaction;
DROP TRIGGER IF EXISTS request_interaction_hourly ON request_interaction;
DROP FUNCTION IF EXISTS count_into_hourly();
DROP INDEX IF EXISTS rejected_message_local_date_idx;

CREATE TABLE rejected_daily (
    local_date DATE NOT NULL,
    reason     TEXT NOT NULL,
    rejected   BIGINT NOT NULL,
    PRIMARY KEY (local_date, reason)
);
INSERT INTO rejected_daily (local_date, reason, rejected)
SELECT (rejected_at AT TIME ZONE (SELECT time_zone FROM museum_settings))::date, reason, count(*)
FROM rejected_message GROUP BY 1, 2;
