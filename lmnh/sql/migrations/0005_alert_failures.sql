-- 0005: an alert SNS refuses for good is kept in the outbox as failed (issue 21, fault 7).
-- Upgrades a database built by the previous schema.sql in place, keeping every row; then
-- schema_views.sql is re-applied (v_request gains alert_failed_at and alert_failure, and an
-- alert given up is no longer pending).

ALTER TABLE emergency_alert
    ADD COLUMN failed_at TIMESTAMPTZ,
    ADD COLUMN failure   TEXT,
    ADD CONSTRAINT emergency_alert_failure_check CHECK ((failed_at IS NULL) = (failure IS NULL));
