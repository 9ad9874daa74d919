-- 0003: the lineage sync needs the old row of an update (a link whose key columns changed must lose its old
-- edge), and records where it got to, so status can show the last sync time however the sync ran
-- (in the operator or as a CronJob).

ALTER TABLE registry.outbox ADD COLUMN old_payload jsonb;

CREATE OR REPLACE FUNCTION registry.write_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO registry.outbox (event_type, payload, old_payload)
    VALUES (
        TG_TABLE_NAME || '.' || lower(TG_OP),
        CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END,
        CASE WHEN TG_OP = 'UPDATE' THEN to_jsonb(OLD) END
    );
    RETURN NULL;
END;
$$;

-- One row: the end of the latest sync pass and the newest event it processed.
CREATE TABLE registry.lineage_sync_state (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_sync_at  timestamptz NOT NULL,
    last_event_id bigint
);
