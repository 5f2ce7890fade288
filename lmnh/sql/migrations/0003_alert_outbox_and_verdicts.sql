-- 0003: the emergency alert outbox and the per-partition verdict bookkeeping (issue 12).
-- Upgrades a database built by the previous schema.sql in place, keeping every row; then
-- schema_views.sql is re-applied (the v_request view gains alert_sent_at and alert_pending).

CREATE TABLE emergency_alert (
    source           TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    source_offset    BIGINT NOT NULL,
    pressed_at       TIMESTAMPTZ NOT NULL,
    subject          TEXT NOT NULL,
    message          TEXT NOT NULL,
    recorded_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    sent_at          TIMESTAMPTZ,
    PRIMARY KEY (source, source_partition, source_offset)
);
CREATE INDEX emergency_alert_pending_idx ON emergency_alert (pressed_at) WHERE sent_at IS NULL;

CREATE TABLE source_progress (
    source           TEXT NOT NULL,
    source_partition INTEGER NOT NULL,
    next_offset      BIGINT NOT NULL,
    PRIMARY KEY (source, source_partition)
);

-- What is stored already has its verdict: the mark starts past the highest stored offset.
-- Emergencies stored before this release were alerted (or not) by the old code: they get no
-- outbox row, so none is re-sent and none shows as pending.
INSERT INTO source_progress (source, source_partition, next_offset)
SELECT source, source_partition, max(source_offset) + 1
FROM (SELECT source, source_partition, max(source_offset) AS source_offset
      FROM rating_interaction GROUP BY 1, 2
      UNION ALL
      SELECT source, source_partition, max(source_offset) FROM request_interaction GROUP BY 1, 2
      UNION ALL
      SELECT source, source_partition, max(source_offset) FROM rejected_message GROUP BY 1, 2)
     AS stored
GROUP BY 1, 2;
