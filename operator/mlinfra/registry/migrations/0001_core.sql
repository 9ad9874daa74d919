-- 0001: the core registry schema.
--
-- Everything lives in the schema "registry" of the registry's database. The migration runner
-- (mlinfra.registry.migrate) creates the schema and registry.schema_migrations before running this file,
-- inside the same transaction, under an advisory lock.
--
-- Change capture: every table gets an audit trigger (append-only registry.audit_log); the tables that make up
-- the lineage graph also get an outbox trigger (registry.outbox), so an event is written in the same
-- transaction as the change. Both trigger functions are SECURITY DEFINER: the writer role needs no privilege
-- on audit_log or outbox, and so cannot forge or erase entries.

CREATE TABLE registry.registered_models (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 255),
    description text NOT NULL DEFAULT '',
    tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE registry.model_versions (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_id    bigint NOT NULL REFERENCES registry.registered_models (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version >= 1),
    stage       text NOT NULL DEFAULT 'none' CHECK (stage IN ('none', 'staging', 'production', 'archived')),
    run_id      text,
    description text NOT NULL DEFAULT '',
    tags        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, version),
    UNIQUE (id, model_id)  -- target of the aliases' composite key
);

-- An alias (e.g. "champion") names at most one version per model.
CREATE TABLE registry.model_version_aliases (
    model_id         bigint NOT NULL,
    alias            text NOT NULL CHECK (alias ~ '^[A-Za-z][A-Za-z0-9_.-]{0,62}$'),
    model_version_id bigint NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_version_id, model_id) REFERENCES registry.model_versions (id, model_id) ON DELETE CASCADE
);

CREATE TABLE registry.artifacts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_version_id bigint NOT NULL REFERENCES registry.model_versions (id) ON DELETE CASCADE,
    name             text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    uri              text NOT NULL CHECK (length(uri) > 0),
    checksum         text NOT NULL CHECK (checksum ~ '^[a-z0-9]+:[0-9a-f]+$'),  -- e.g. sha256:<hex>
    size_bytes       bigint NOT NULL CHECK (size_bytes >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_version_id, name)
);

CREATE TABLE registry.params (
    model_version_id bigint NOT NULL REFERENCES registry.model_versions (id) ON DELETE CASCADE,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    value            text NOT NULL,
    PRIMARY KEY (model_version_id, key)
);

CREATE TABLE registry.metrics (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_version_id bigint NOT NULL REFERENCES registry.model_versions (id) ON DELETE CASCADE,
    key              text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    value            double precision NOT NULL,
    step             bigint NOT NULL DEFAULT 0 CHECK (step >= 0),
    "timestamp"      timestamptz NOT NULL DEFAULT now()
);

-- A dataset is identified by name and version ('' when unversioned).
CREATE TABLE registry.datasets (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 255),
    version     text NOT NULL DEFAULT '',
    uri         text NOT NULL DEFAULT '',
    checksum    text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, version)
);

CREATE TABLE registry.model_version_datasets (
    model_version_id bigint NOT NULL REFERENCES registry.model_versions (id) ON DELETE CASCADE,
    dataset_id       bigint NOT NULL REFERENCES registry.datasets (id) ON DELETE CASCADE,
    relation         text NOT NULL CHECK (relation IN ('TRAINED_ON', 'EVALUATED_ON')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version_id, dataset_id, relation)
);
CREATE INDEX model_version_datasets_by_dataset ON registry.model_version_datasets (dataset_id);

-- A FeatureView is a Kubernetes object, named by namespace/name; it has no row of its own.
CREATE TABLE registry.model_version_features (
    model_version_id       bigint NOT NULL REFERENCES registry.model_versions (id) ON DELETE CASCADE,
    feature_view_namespace text NOT NULL CHECK (length(feature_view_namespace) BETWEEN 1 AND 63),
    feature_view_name      text NOT NULL CHECK (length(feature_view_name) BETWEEN 1 AND 253),
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_version_id, feature_view_namespace, feature_view_name)
);
CREATE INDEX model_version_features_by_view
    ON registry.model_version_features (feature_view_namespace, feature_view_name);

CREATE TABLE registry.deployments (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_version_id bigint NOT NULL REFERENCES registry.model_versions (id) ON DELETE CASCADE,
    environment      text NOT NULL CHECK (length(environment) BETWEEN 1 AND 63),
    deployed_at      timestamptz NOT NULL DEFAULT now(),
    description      text NOT NULL DEFAULT ''
);
CREATE INDEX deployments_by_version ON registry.deployments (model_version_id);
CREATE INDEX deployments_by_environment ON registry.deployments (environment, deployed_at DESC);

-- Append-only: written by triggers only; UPDATE, DELETE and TRUNCATE raise for everyone (roles.py also
-- revokes the privileges).
CREATE TABLE registry.audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT clock_timestamp(),
    txid       bigint NOT NULL DEFAULT txid_current(),
    actor      text NOT NULL,
    table_name text NOT NULL,
    operation  text NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    old_row    jsonb,
    new_row    jsonb
);

-- Change events for the lineage graph. event_type is '<table>.<insert|update|delete>'; payload is the new row
-- (the old row for deletes). processed_at is set by the lineage sync after the graph write committed.
CREATE TABLE registry.outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    processed_at timestamptz,
    event_type   text NOT NULL,
    payload      jsonb NOT NULL
);
CREATE INDEX outbox_pending ON registry.outbox (id) WHERE processed_at IS NULL;

CREATE FUNCTION registry.audit_log_is_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'registry.audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON registry.audit_log
    FOR EACH ROW EXECUTE FUNCTION registry.audit_log_is_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON registry.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION registry.audit_log_is_append_only();

CREATE FUNCTION registry.write_audit_log() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO registry.audit_log (actor, table_name, operation, old_row, new_row)
    VALUES (
        session_user, TG_TABLE_NAME, TG_OP,
        CASE WHEN TG_OP IN ('UPDATE', 'DELETE') THEN to_jsonb(OLD) END,
        CASE WHEN TG_OP IN ('INSERT', 'UPDATE') THEN to_jsonb(NEW) END
    );
    RETURN NULL;
END;
$$;

CREATE FUNCTION registry.write_outbox() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO registry.outbox (event_type, payload)
    VALUES (
        TG_TABLE_NAME || '.' || lower(TG_OP),
        CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END
    );
    RETURN NULL;
END;
$$;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['registered_models', 'model_versions', 'model_version_aliases', 'artifacts',
                             'params', 'metrics', 'datasets', 'model_version_datasets',
                             'model_version_features', 'deployments'] LOOP
        EXECUTE format('CREATE TRIGGER audit AFTER INSERT OR UPDATE OR DELETE ON registry.%I '
                       'FOR EACH ROW EXECUTE FUNCTION registry.write_audit_log()', t);
    END LOOP;
    FOREACH t IN ARRAY ARRAY['registered_models', 'model_versions', 'datasets', 'model_version_datasets',
                             'model_version_features', 'deployments'] LOOP
        EXECUTE format('CREATE TRIGGER outbox AFTER INSERT OR UPDATE OR DELETE ON registry.%I '
                       'FOR EACH ROW EXECUTE FUNCTION registry.write_outbox()', t);
    END LOOP;
END;
$$;
