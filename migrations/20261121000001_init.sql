-- callstore schema, version 1.
--
-- Rules every table follows:
--   * every row belongs to a tenant, and `tenant_id` is the first column of every primary key,
--     unique key and index, so every query is tenant-scoped by construction and the schema can be
--     distributed by tenant (e.g. Citus) later;
--   * enum columns hold the numbers of the matching callstore.v1 protobuf enum (0 = unspecified);
--   * `extra` keeps the source payload's fields the model does not cover, so ingest is lossless;
--   * `source_system` + the source's own id is the idempotency key of each ingested resource.

CREATE TABLE tenants (
    tenant_id    text        PRIMARY KEY
                 CONSTRAINT tenant_id_format CHECK (tenant_id ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
    display_name text        NOT NULL DEFAULT '',
    create_time  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tasks (
    tenant_id            text        NOT NULL REFERENCES tenants (tenant_id),
    id                   uuid        NOT NULL DEFAULT gen_random_uuid(),
    source_format        smallint    NOT NULL,
    source_system        text        NOT NULL,
    source_task_id       text        NOT NULL,
    name                 text        NOT NULL DEFAULT '',
    source_create_time   timestamptz,
    source_update_time   timestamptz,
    run_state            smallint    NOT NULL DEFAULT 0,
    max_concurrent_calls integer,
    calls_per_second     integer,
    redial_rounds        integer,
    ring_timeout_seconds integer,
    caller_id_number     text,
    call_notify_url      text,
    script_group_id      text,
    script_group_name    text,
    tag_scene_id         text,
    project_id           text,
    project_name         text,
    extra                jsonb       NOT NULL DEFAULT '{}',
    content_hash         bytea,
    create_time          timestamptz NOT NULL DEFAULT now(),
    update_time          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT tasks_source_key UNIQUE (tenant_id, source_system, source_task_id)
);

CREATE TABLE task_numbers (
    tenant_id             text        NOT NULL,
    id                    uuid        NOT NULL DEFAULT gen_random_uuid(),
    task_id               uuid        NOT NULL,
    source_format         smallint    NOT NULL,
    source_number_id      text,
    number                text        NOT NULL,
    province              text,
    city                  text,
    area_code             text,
    post_code             text,
    carrier               smallint    NOT NULL DEFAULT 0,
    carrier_name          text,
    blacklisted           boolean     NOT NULL DEFAULT false,
    status                smallint    NOT NULL DEFAULT 0,
    latest_source_call_id text,
    extra                 jsonb       NOT NULL DEFAULT '{}',
    content_hash          bytea,
    create_time           timestamptz NOT NULL DEFAULT now(),
    update_time           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT task_numbers_number_key UNIQUE (tenant_id, task_id, number),
    FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id) ON DELETE CASCADE
);

-- ListTaskNumbers: by status (and carrier) within a task, in number order.
CREATE INDEX task_numbers_status_idx ON task_numbers (tenant_id, task_id, status, number);

CREATE TABLE call_attempts (
    tenant_id          text        NOT NULL,
    id                 uuid        NOT NULL DEFAULT gen_random_uuid(),
    task_number_id     uuid        NOT NULL,
    -- What makes an attempt unique within its number: the source's attempt id, else its call id.
    attempt_key        text        NOT NULL,
    source_attempt_id  text,
    source_call_id     text,
    call_time          timestamptz,
    duration_ms        bigint,
    talk_duration_ms   bigint,
    hangup_cause       text,
    sip_code           text,
    call_status        text,
    status             smallint    NOT NULL DEFAULT 0,
    record_file        text,
    calling_number     text,
    extra              jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT call_attempts_key UNIQUE (tenant_id, task_number_id, attempt_key),
    FOREIGN KEY (tenant_id, task_number_id) REFERENCES task_numbers (tenant_id, id) ON DELETE CASCADE
);

-- Joins an attempt to the call record of the same telephony call.
CREATE INDEX call_attempts_call_idx ON call_attempts (tenant_id, source_call_id);

CREATE TABLE tag_groups (
    tenant_id           text        NOT NULL REFERENCES tenants (tenant_id),
    id                  uuid        NOT NULL DEFAULT gen_random_uuid(),
    source_format       smallint    NOT NULL,
    source_system       text        NOT NULL,
    source_tag_group_id text        NOT NULL,
    name                text        NOT NULL DEFAULT '',
    scene_id            text,
    source_create_time  timestamptz,
    source_update_time  timestamptz,
    extra               jsonb       NOT NULL DEFAULT '{}',
    content_hash        bytea,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT tag_groups_source_key UNIQUE (tenant_id, source_system, source_tag_group_id)
);

CREATE TABLE tags (
    tenant_id          text        NOT NULL REFERENCES tenants (tenant_id),
    id                 uuid        NOT NULL DEFAULT gen_random_uuid(),
    source_format      smallint    NOT NULL,
    source_system      text        NOT NULL,
    source_tag_id      text        NOT NULL,
    name               text        NOT NULL DEFAULT '',
    description        text,
    color              text,
    enabled            boolean     NOT NULL DEFAULT true,
    source_create_time timestamptz,
    source_update_time timestamptz,
    extra              jsonb       NOT NULL DEFAULT '{}',
    content_hash       bytea,
    create_time        timestamptz NOT NULL DEFAULT now(),
    update_time        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT tags_source_key UNIQUE (tenant_id, source_system, source_tag_id)
);

-- A tag can belong to several groups (母标签).
CREATE TABLE tag_group_members (
    tenant_id    text NOT NULL,
    tag_group_id uuid NOT NULL,
    tag_id       uuid NOT NULL,
    PRIMARY KEY (tenant_id, tag_group_id, tag_id),
    FOREIGN KEY (tenant_id, tag_group_id) REFERENCES tag_groups (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES tags (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX tag_group_members_tag_idx ON tag_group_members (tenant_id, tag_id);

CREATE TABLE levels (
    tenant_id       text        NOT NULL REFERENCES tenants (tenant_id),
    id              uuid        NOT NULL DEFAULT gen_random_uuid(),
    source_format   smallint    NOT NULL,
    source_system   text        NOT NULL,
    source_level_id text        NOT NULL,
    name            text        NOT NULL DEFAULT '',
    alias           text,
    color           text,
    min_score       bigint,
    max_score       bigint,
    extra           jsonb       NOT NULL DEFAULT '{}',
    content_hash    bytea,
    create_time     timestamptz NOT NULL DEFAULT now(),
    update_time     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT levels_source_key UNIQUE (tenant_id, source_system, source_level_id),
    CONSTRAINT levels_score_range CHECK (min_score IS NULL OR max_score IS NULL OR min_score <= max_score)
);

CREATE TABLE calls (
    tenant_id           text        NOT NULL REFERENCES tenants (tenant_id),
    id                  uuid        NOT NULL,
    source_format       smallint    NOT NULL,
    source_system       text        NOT NULL,
    source_call_id      text        NOT NULL,
    version             bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    state               smallint    NOT NULL,
    -- Hash of the normalised content (call, turns, tags): a re-delivery with the same hash is a
    -- duplicate and changes nothing.
    content_hash        bytea       NOT NULL,

    task_id             uuid,
    source_task_id      text,
    source_record_id    text,
    script_group_id     text,

    callee              text        NOT NULL DEFAULT '',
    caller              text,
    province            text,
    city                text,
    area_code           text,
    post_code           text,
    carrier             smallint    NOT NULL DEFAULT 0,
    carrier_name        text,
    region_text         text,
    customer            jsonb,

    dial_time           timestamptz NOT NULL,
    answer_time         timestamptz,
    hangup_time         timestamptz,
    duration_ms         bigint,
    talk_duration_ms    bigint,
    billed_minutes      integer,

    outcome             smallint    NOT NULL DEFAULT 0,
    number_status       smallint    NOT NULL DEFAULT 0,
    hangup_cause        text,
    end_reason          text,
    sip_code            text,
    hangup_side         smallint    NOT NULL DEFAULT 0,
    error_code          integer,
    huawei              jsonb,
    number_check_status smallint    NOT NULL DEFAULT 0,

    rounds              integer,
    asks_count          integer,
    call_count          integer,
    score               bigint,
    level_id            uuid,
    gender              smallint    NOT NULL DEFAULT 0,
    last_reply          text,
    end_node            text,
    classification      jsonb,
    labels              text[]      NOT NULL DEFAULT '{}',
    dynamic_labels      text[]      NOT NULL DEFAULT '{}',
    satisfaction        smallint    NOT NULL DEFAULT 0,
    call_mode           smallint    NOT NULL DEFAULT 0,
    call_mode_code      integer,
    first_connected     boolean,

    transfer_state      smallint    NOT NULL DEFAULT 0,
    transfer            jsonb,
    record_file         text,
    record_path         text,
    read_time           timestamptz,

    custom_fields       jsonb       NOT NULL DEFAULT '{}',
    turn_count          integer     NOT NULL DEFAULT 0,
    source_create_time  timestamptz,
    source_update_time  timestamptz,
    create_time         timestamptz NOT NULL DEFAULT now(),
    update_time         timestamptz NOT NULL DEFAULT now(),
    extra               jsonb       NOT NULL DEFAULT '{}',

    PRIMARY KEY (tenant_id, id),
    -- Idempotency key: the same call from the same system is stored once.
    CONSTRAINT calls_source_key UNIQUE (tenant_id, source_system, source_call_id),
    FOREIGN KEY (tenant_id, task_id) REFERENCES tasks (tenant_id, id),
    FOREIGN KEY (tenant_id, level_id) REFERENCES levels (tenant_id, id)
);

-- The list filters of the seeds (`query_done_task_phones`): a task's calls by time (the default
-- order), score ranges, callee, talk time and rounds; and the same across a tenant's tasks.
CREATE INDEX calls_task_time_idx   ON calls (tenant_id, task_id, dial_time DESC, id DESC);
CREATE INDEX calls_time_idx        ON calls (tenant_id, dial_time DESC, id DESC);
CREATE INDEX calls_task_score_idx  ON calls (tenant_id, task_id, score, id);
CREATE INDEX calls_task_talk_idx   ON calls (tenant_id, task_id, talk_duration_ms, id);
CREATE INDEX calls_task_rounds_idx ON calls (tenant_id, task_id, rounds, id);
CREATE INDEX calls_callee_idx      ON calls (tenant_id, callee text_pattern_ops);
CREATE INDEX calls_level_idx       ON calls (tenant_id, level_id);

CREATE TABLE turns (
    tenant_id       text        NOT NULL,
    call_id         uuid        NOT NULL,
    sequence        integer     NOT NULL CHECK (sequence >= 1),
    speaker         smallint    NOT NULL,
    text            text        NOT NULL DEFAULT '',
    time            timestamptz,
    start_offset_ms bigint,
    end_offset_ms   bigint,
    speak_ms        bigint,
    play_ms         bigint,
    node_id         text,
    node_name       text,
    node_class      text,
    node_type       smallint    NOT NULL DEFAULT 0,
    trigger_title   text,
    matched_keyword text,
    jump_type       smallint    NOT NULL DEFAULT 0,
    match_type      integer,
    score_delta     bigint,
    label           text,
    audio_file      text,
    audio_pieces    jsonb,
    asr_engine      text,
    asr_latency_ms  bigint,
    record_ms       bigint,
    volume_gain     double precision,
    question_index  integer,
    after_transfer  boolean     NOT NULL DEFAULT false,
    source_turn_id  text,
    extra           jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (tenant_id, call_id, sequence),
    FOREIGN KEY (tenant_id, call_id) REFERENCES calls (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE call_tags (
    tenant_id text NOT NULL,
    call_id   uuid NOT NULL,
    tag_id    uuid NOT NULL,
    PRIMARY KEY (tenant_id, call_id, tag_id),
    FOREIGN KEY (tenant_id, call_id) REFERENCES calls (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES tags (tenant_id, id)
);

-- The tag filter: calls carrying a tag.
CREATE INDEX call_tags_tag_idx ON call_tags (tenant_id, tag_id, call_id);

CREATE TABLE turn_tags (
    tenant_id text    NOT NULL,
    call_id   uuid    NOT NULL,
    sequence  integer NOT NULL,
    tag_id    uuid    NOT NULL,
    PRIMARY KEY (tenant_id, call_id, sequence, tag_id),
    FOREIGN KEY (tenant_id, call_id, sequence) REFERENCES turns (tenant_id, call_id, sequence) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, tag_id) REFERENCES tags (tenant_id, id)
);

CREATE INDEX turn_tags_tag_idx ON turn_tags (tenant_id, tag_id);

CREATE TABLE quality_results (
    tenant_id          text             NOT NULL,
    id                 uuid             NOT NULL DEFAULT gen_random_uuid(),
    call_id            uuid             NOT NULL,
    source             smallint         NOT NULL,
    version            bigint           NOT NULL DEFAULT 1 CHECK (version >= 1),
    source_format      smallint         NOT NULL DEFAULT 0,
    status             smallint         NOT NULL DEFAULT 0,
    score              double precision,
    rule_set_id        uuid,
    rule_set_version   bigint,
    violation_count    integer,
    -- Hash of the result's content: an imported result delivered again adds no version.
    content_hash       bytea,
    -- The rest of the result (side metrics, segments, rule hits, profile), as the API models it.
    details            jsonb            NOT NULL DEFAULT '{}',
    extra              jsonb            NOT NULL DEFAULT '{}',
    create_time        timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    CONSTRAINT quality_results_version_key UNIQUE (tenant_id, call_id, source, version),
    FOREIGN KEY (tenant_id, call_id) REFERENCES calls (tenant_id, id) ON DELETE CASCADE
);

CREATE INDEX quality_results_score_idx ON quality_results (tenant_id, score);

-- Append-only feed of committed changes, read by the live stream. One row per change, written in
-- the same transaction as the change. `tx_id` lets readers hold back rows of transactions that
-- are still in flight (the xid8 watermark), so a late commit is never skipped.
CREATE TABLE feed_events (
    tenant_id      text        NOT NULL REFERENCES tenants (tenant_id),
    id             bigint      GENERATED ALWAYS AS IDENTITY,
    tx_id          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    kind           smallint    NOT NULL,
    call_id        uuid        NOT NULL,
    call_version   bigint      NOT NULL,
    task_id        uuid,
    turn_sequence  integer,
    quality_id     uuid,
    create_time    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE INDEX feed_events_tx_idx   ON feed_events (tenant_id, tx_id, id);
CREATE INDEX feed_events_time_idx ON feed_events (tenant_id, create_time);
