-- 0002: deployments can be retired (kept for history), and metrics are read per version, key and step.

ALTER TABLE registry.deployments ADD COLUMN retired_at timestamptz;
ALTER TABLE registry.deployments ADD CONSTRAINT deployments_retired_after_deployed
    CHECK (retired_at IS NULL OR retired_at >= deployed_at);

CREATE INDEX metrics_by_version_key_step ON registry.metrics (model_version_id, key, step);
