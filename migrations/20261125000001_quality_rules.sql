-- Quality inspection: scoring profiles, versioned rule sets, re-scoring jobs, and what the call
-- list needs to filter on a call's latest computed result.

CREATE TABLE scoring_profiles (
    tenant_id    text             NOT NULL REFERENCES tenants (tenant_id),
    id           uuid             NOT NULL DEFAULT gen_random_uuid(),
    name         text             NOT NULL,
    base         double precision NOT NULL,
    lower_bound  double precision NOT NULL,
    upper_bound  double precision NOT NULL,
    create_time  timestamptz      NOT NULL DEFAULT now(),
    update_time  timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT scoring_profiles_bounds_check CHECK (lower_bound <= base AND base <= upper_bound)
);

-- A rule set's current state; each version's rules are kept in rule_set_versions, so results
-- scored with an older version stay explainable.
CREATE TABLE rule_sets (
    tenant_id           text        NOT NULL REFERENCES tenants (tenant_id),
    id                  uuid        NOT NULL DEFAULT gen_random_uuid(),
    name                text        NOT NULL,
    version             bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    -- A profile in use cannot be deleted (the foreign key restricts it).
    scoring_profile_id  uuid,
    -- Calls are scored at ingest with the tenant's active rule set.
    active              boolean     NOT NULL DEFAULT false,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, scoring_profile_id) REFERENCES scoring_profiles (tenant_id, id)
);

CREATE UNIQUE INDEX rule_sets_active_key ON rule_sets (tenant_id) WHERE active;
CREATE INDEX rule_sets_create_idx ON rule_sets (tenant_id, create_time, id);
CREATE INDEX rule_sets_profile_idx ON rule_sets (tenant_id, scoring_profile_id);
CREATE INDEX scoring_profiles_create_idx ON scoring_profiles (tenant_id, create_time, id);

CREATE TABLE rule_set_versions (
    tenant_id           text        NOT NULL,
    rule_set_id         uuid        NOT NULL,
    version             bigint      NOT NULL,
    name                text        NOT NULL,
    -- The rules as the domain models them (`quality::rules::Rule`).
    rules               jsonb       NOT NULL,
    scoring_profile_id  uuid,
    create_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, rule_set_id, version),
    FOREIGN KEY (tenant_id, rule_set_id) REFERENCES rule_sets (tenant_id, id) ON DELETE CASCADE
);

-- Re-scoring of a task's or a window's calls in the background. Any replica runs a job whose
-- lease has run out, from where it stopped (the keyset position of the last call done).
CREATE TABLE rescore_jobs (
    tenant_id         text        NOT NULL,
    id                uuid        NOT NULL DEFAULT gen_random_uuid(),
    rule_set_id       uuid        NOT NULL,
    rule_set_version  bigint      NOT NULL,
    task_id           uuid,
    start_time        timestamptz,
    end_time          timestamptz,
    total_calls       bigint      NOT NULL DEFAULT 0,
    done_calls        bigint      NOT NULL DEFAULT 0,
    rescored_calls    bigint      NOT NULL DEFAULT 0,
    last_dial_time    timestamptz,
    last_call_id      uuid,
    finished          boolean     NOT NULL DEFAULT false,
    lease_owner       uuid,
    lease_until       timestamptz,
    create_time       timestamptz NOT NULL DEFAULT now(),
    finish_time       timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, rule_set_id) REFERENCES rule_sets (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX rescore_jobs_rule_set_idx ON rescore_jobs (tenant_id, rule_set_id);

-- Rule ids the result hit: the call list's rule-hit filter reads them off the latest result.
ALTER TABLE quality_results ADD COLUMN hit_rule_ids text[] NOT NULL DEFAULT '{}';
