-- GetTaskStats: per-task statistics rollups, maintained at ingest by triggers.
--
-- What is counted, per call of a task (calls without a task are not counted):
--   * totals: calls; answered (outcome ANSWERED = 1); transferred (transfer_state neither
--     UNSPECIFIED = 0 nor NOT_TRANSFERRED = 1); talk sum, count, min and max over answered calls
--     with a talk_duration_ms;
--   * counts per dimension and key (dimension codes, mirrored in src/db/stats.rs):
--       1 outcome, 2 number status, 3 hang-up side (keyed by enum number, `codes`),
--       4 level, 5 tag (keyed by server id, `ids`; calls without a level are not counted),
--       6 talk time and 7 answer delay (answer_time - dial_time) of answered calls, keyed
--       0..5 for [0, 3 s), [3 s, 5 s), [5 s, 10 s), [10 s, 30 s), [30 s, 60 s), [60 s, ∞)
--       (the API adds them up into Huawei's cumulative lt_3s .. lt_60s, and ge_60s).
--
-- Buckets: the minute (the "slot", the finest), the hour and the day, in UTC (`span` 60, 3600
-- and 86400 seconds), one row each with the counts packed in parallel arrays: one row per
-- bucket rather than one per key, so a month of a busy task is ~150 rows to read (~60 keys
-- each) and compacting a bucket rewrites one row. A window reads whole days, then whole hours,
-- then whole minutes, and its unaligned edges (under a minute each) straight from `calls`
-- through calls_task_time_idx: exact for any window. (Measured on a task of 1M calls over 30
-- days: hour buckets alone leave edges of up to an hour, ~3,000 calls and their tags, 20-40 ms
-- to read; one row per key makes a month ~15,000 rows, 10-25 ms.)
--
-- Write path, without hot rows: concurrent ingest transactions commit into the same (tenant,
-- task, current slot), so upserting a shared rollup row would hold its lock until commit and
-- serialize ingest. Statement-level AFTER triggers with transition tables on `calls` and
-- `call_tags` instead append delta rows (plain INSERTs; one per tenant, task and slot a
-- statement touches). An INSERT … ON CONFLICT DO UPDATE fires the INSERT trigger for the rows
-- it inserted and the UPDATE trigger for the rows it updated. An update removes the old rows'
-- contribution and adds the new rows'; what did not change cancels out (appending turns
-- writes no delta). The triggers only copy transition rows into arrays; call_stats_append does
-- the rest.
--
-- Tags: a call_tags row counts at its call's current task and slot. When an update or a delete
-- removes a call's contribution (and adds the new one), the tags it has at that moment go with
-- it, so a call moved to another task or slot takes them along; a call_tags row written or
-- deleted counts at its call's place at that moment. So the tag counts are those of call_tags
-- joined to calls, provided a call's tags are written after the call (an inserted call is taken
-- to have none, which spares a lookup per call) and not by the statement that moves it; the
-- writer (src/db/calls.rs) does both.
--
-- Compaction (src/stats.rs every few seconds, the pass in src/db/stats.rs): one compactor at a
-- time per database (pg_try_advisory_xact_lock) deletes the visible deltas (DELETE …
-- RETURNING), adds them into the call_stats_buckets rows of all three spans and writes those
-- back, in one transaction. A reader in one REPEATABLE READ snapshot adds the compacted rows
-- and the deltas not compacted yet, so it is exact at any moment.
--
-- Min and max talk time cannot be decremented. A delta carries the min and max of the talk
-- times it adds (added_*) and of those it removes (removed_*; a value removed and added again
-- in the same place cancels out). Over rows whose min m is exact, adding values gives
-- least(m, added_min); removed values change nothing unless one is <= that candidate (a
-- removed value was present, so it is >= the true min; if it equals the candidate, the
-- candidate may be gone): the min is then "stale". The compactor recomputes a stale slot from
-- its calls (calls_task_time_idx, a minute of calls) and a stale hour or day from its slots,
-- in the same transaction, so compacted rows are always exact; a reader that finds a pending
-- removal at or beyond its candidate recomputes from slot rows and calls the same way
-- (src/db/stats.rs). Max is symmetric.
--
-- TRUNCATE of calls or call_tags is not tracked: truncate the call_stats_* tables with them.

-- Pending changes, appended by the triggers and folded away by the compactor: signed
-- differences. No primary key: rows are only appended and deleted whole.
CREATE TABLE call_stats_deltas (
    tenant_id       text        NOT NULL,
    task_id         uuid        NOT NULL,
    slot            timestamptz NOT NULL,
    calls           bigint      NOT NULL,
    answered        bigint      NOT NULL,
    transferred     bigint      NOT NULL,
    talk_sum        bigint      NOT NULL,
    talk_count      bigint      NOT NULL,
    added_min       bigint,
    added_max       bigint,
    removed_min     bigint,
    removed_max     bigint,
    -- Counts of enum keys: (code_dimensions[i], codes[i]) counts code_counts[i].
    code_dimensions smallint[]  NOT NULL,
    codes           smallint[]  NOT NULL,
    code_counts     bigint[]    NOT NULL,
    -- Counts of id keys: (id_dimensions[i], ids[i]) counts id_counts[i].
    id_dimensions   smallint[]  NOT NULL,
    ids             uuid[]      NOT NULL,
    id_counts       bigint[]    NOT NULL
)
-- A queue: vacuumed after a fixed number of deleted rows, not a fraction of a table that is
-- nearly empty after each compaction.
WITH (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 10000);

CREATE INDEX call_stats_deltas_slot_idx ON call_stats_deltas (tenant_id, task_id, slot);

-- Compacted rollups: the calls of `task_id` dialled in [bucket, bucket + span seconds).
CREATE TABLE call_stats_buckets (
    tenant_id       text        NOT NULL,
    task_id         uuid        NOT NULL,
    span            integer     NOT NULL CHECK (span IN (60, 3600, 86400)),
    bucket          timestamptz NOT NULL,
    calls           bigint      NOT NULL,
    answered        bigint      NOT NULL,
    transferred     bigint      NOT NULL,
    talk_sum        bigint      NOT NULL,
    talk_count      bigint      NOT NULL,
    talk_min        bigint,
    talk_max        bigint,
    code_dimensions smallint[]  NOT NULL,
    codes           smallint[]  NOT NULL,
    code_counts     bigint[]    NOT NULL,
    id_dimensions   smallint[]  NOT NULL,
    ids             uuid[]      NOT NULL,
    id_counts       bigint[]    NOT NULL,
    PRIMARY KEY (tenant_id, task_id, span, bucket)
)
-- Rewritten at each compaction that touches them: room on the page for HOT updates.
WITH (fillfactor = 70);

-- The definitions, shared by the triggers, the backfill below, the compactor and the reader
-- (SQL functions the planner inlines). The reader applies them in Rust to the few calls of a
-- window's unaligned edges (`EdgeCall` in src/db/stats.rs): change both together.

-- Start of the `span`-second bucket holding `t`, aligned on the UTC epoch.
CREATE FUNCTION call_stats_bucket(t timestamptz, span integer) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT to_timestamp(floor(extract(epoch FROM (t - timestamptz '1970-01-01 00:00:00+00')) / span) * span)
$$;

CREATE FUNCTION call_stats_slot(t timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT call_stats_bucket(t, 60) $$;

CREATE FUNCTION call_stats_answered(outcome smallint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT outcome = 1 $$;

CREATE FUNCTION call_stats_transferred(transfer_state smallint) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT transfer_state NOT IN (0, 1) $$;

-- The talk time a call counts with: an answered call's talk_duration_ms, else NULL.
CREATE FUNCTION call_stats_talk(outcome smallint, talk_duration_ms bigint) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN outcome = 1 THEN talk_duration_ms END $$;

CREATE FUNCTION call_stats_duration_bucket(duration interval) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE
        WHEN duration IS NULL THEN NULL
        WHEN duration < interval '3 seconds' THEN 0
        WHEN duration < interval '5 seconds' THEN 1
        WHEN duration < interval '10 seconds' THEN 2
        WHEN duration < interval '30 seconds' THEN 3
        WHEN duration < interval '60 seconds' THEN 4
        ELSE 5
    END::smallint
$$;

-- The keys a call counts under, tags aside: (dimension, code) or (dimension, id).
CREATE FUNCTION call_stats_keys(
    outcome smallint, number_status smallint, hangup_side smallint, level_id uuid,
    talk_duration_ms bigint, dial_time timestamptz, answer_time timestamptz
) RETURNS TABLE (dimension smallint, code smallint, id uuid)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT v.dimension, v.code, v.id
    FROM (VALUES
        (1::smallint, outcome, NULL::uuid),
        (2::smallint, number_status, NULL::uuid),
        (3::smallint, hangup_side, NULL::uuid),
        (4::smallint, NULL::smallint, level_id),
        (6::smallint, CASE WHEN outcome = 1 THEN
             call_stats_duration_bucket(talk_duration_ms * interval '1 millisecond') END, NULL::uuid),
        (7::smallint, CASE WHEN outcome = 1 THEN
             call_stats_duration_bucket(answer_time - dial_time) END, NULL::uuid)
    ) AS v (dimension, code, id)
    WHERE v.code IS NOT NULL OR v.id IS NOT NULL
$$;

-- The counts packed in a row, one per line: (dimension, code, NULL, count) or
-- (dimension, NULL, id, count). The arrays are parallel, in no particular order: they are
-- built by array_agg calls with the same FILTER in one aggregation, which see the rows of a
-- group in the same order.
CREATE FUNCTION call_stats_entries(
    code_dimensions smallint[], codes smallint[], code_counts bigint[],
    id_dimensions smallint[], ids uuid[], id_counts bigint[]
) RETURNS TABLE (dimension smallint, code smallint, id uuid, count bigint)
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT e.dimension, e.code, NULL::uuid, e.count
    FROM unnest(code_dimensions, codes, code_counts) AS e (dimension, code, count)
    UNION ALL
    SELECT e.dimension, NULL::smallint, e.id, e.count
    FROM unnest(id_dimensions, ids, id_counts) AS e (dimension, id, count)
$$;

-- A call as the triggers hand it over: its id and the fields it is counted by.
CREATE TYPE call_stats_call AS (
    tenant_id        text,
    id               uuid,
    task_id          uuid,
    dial_time        timestamptz,
    answer_time      timestamptz,
    outcome          smallint,
    number_status    smallint,
    hangup_side      smallint,
    level_id         uuid,
    transfer_state   smallint,
    talk_duration_ms bigint
);

-- A call_tags row as the triggers hand it over.
CREATE TYPE call_stats_call_tag AS (
    tenant_id text,
    call_id   uuid,
    tag_id    uuid
);

-- A tag's contribution, signed, at its call's task and slot.
CREATE TYPE call_stats_tag_change AS (
    sign      integer,
    tenant_id text,
    task_id   uuid,
    slot      timestamptz,
    tag_id    uuid
);

-- Appends the deltas of one statement's changes, one row per (tenant, task, slot): the calls
-- whose contribution is added and removed (with the tags they have now), and the call_tags rows
-- added and removed (at their call's place now).
--
-- It runs for every statement that writes calls or call_tags, so its plans matter:
-- * the lookups into calls and call_tags are index probes, one per changed call or tag row,
--   driven by the arrays, planned for each call with the tables' current sizes, and without
--   sequential scans, hash or merge joins (with them, a batch of 1,500 tag rows against a
--   calls table whose statistics lag behind its growth was planned as a sequential scan of
--   calls, for every batch);
-- * the aggregation reads nothing but the arrays: its plan is the same for any input, so it
--   is made once per session (a generic plan; planning costs several times the work of a
--   small group commit);
-- * no parallel workers or JIT: starting them costs more than this work.
CREATE FUNCTION call_stats_append(
    added call_stats_call[], removed call_stats_call[],
    added_tags call_stats_call_tag[], removed_tags call_stats_call_tag[],
    added_have_tags boolean
) RETURNS void
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
SET enable_seqscan = off
SET enable_hashjoin = off
SET enable_mergejoin = off
SET max_parallel_workers_per_gather = 0
SET jit = off
AS $function$
DECLARE
    -- Inserted calls have no tags yet (call_tags rows are written after their call).
    tagged call_stats_call[] := CASE WHEN added_have_tags THEN added ELSE '{}' END;
    tag_changes call_stats_tag_change[] := '{}';
BEGIN
    -- The tags of the changed calls, and the call_tags rows at their call's place: index
    -- probes driven by the arrays (the LATERAL ... OFFSET 0 subqueries cannot become joins),
    -- planned for each call (EXECUTE): a plan kept from when the tables were empty probes
    -- calls through any index on tenant_id, reading the tenant's every call for each row.
    IF cardinality(tagged) + cardinality(removed) + cardinality(added_tags)
       + cardinality(removed_tags) > 0 THEN
        EXECUTE $lookup$
            SELECT ARRAY(
                SELECT ROW(c.sign, c.tenant_id, c.task_id, call_stats_slot(c.dial_time),
                           t.tag_id)::call_stats_tag_change
                FROM (SELECT 1 AS sign, a.* FROM unnest($1) AS a
                      UNION ALL
                      SELECT -1, r.* FROM unnest($2) AS r) AS c
                CROSS JOIN LATERAL (
                    SELECT x.tag_id FROM call_tags x
                    WHERE x.tenant_id = c.tenant_id AND x.call_id = c.id
                    OFFSET 0
                ) AS t
                WHERE c.task_id IS NOT NULL
                UNION ALL
                SELECT ROW(t.sign, t.tenant_id, c.task_id, call_stats_slot(c.dial_time),
                           t.tag_id)::call_stats_tag_change
                FROM (SELECT 1 AS sign, a.* FROM unnest($3) AS a
                      UNION ALL
                      SELECT -1, r.* FROM unnest($4) AS r) AS t
                CROSS JOIN LATERAL (
                    SELECT x.task_id, x.dial_time FROM calls x
                    WHERE x.tenant_id = t.tenant_id AND x.id = t.call_id
                    OFFSET 0
                ) AS c
                WHERE c.task_id IS NOT NULL)
        $lookup$
        INTO tag_changes
        USING tagged, removed, added_tags, removed_tags;
    END IF;

    -- Only aggregations, no joins: no plan can misjudge the sizes of the arrays.
    WITH changed AS (
        SELECT 1 AS sign, c.* FROM unnest(added) AS c
        UNION ALL
        SELECT -1, c.* FROM unnest(removed) AS c
    ),
    placed AS (
        SELECT c.*, call_stats_slot(c.dial_time) AS slot,
               call_stats_talk(c.outcome, c.talk_duration_ms) AS talk
        FROM changed c
        WHERE c.task_id IS NOT NULL
    ),
    -- Per slot: totals ('t'), the net multiset of talk times ('x': a talk time removed and
    -- added again cancels out) and net counts per key ('k').
    parts AS (
        SELECT p.tenant_id, p.task_id, p.slot, 't' AS kind,
               sum(p.sign) AS calls,
               coalesce(sum(p.sign) FILTER (WHERE call_stats_answered(p.outcome)), 0) AS answered,
               coalesce(sum(p.sign) FILTER (WHERE call_stats_transferred(p.transfer_state)), 0)
                   AS transferred,
               coalesce(sum(p.sign * p.talk), 0) AS talk_sum,
               coalesce(sum(p.sign) FILTER (WHERE p.talk IS NOT NULL), 0) AS talk_count,
               NULL::bigint AS talk, NULL::smallint AS dimension, NULL::smallint AS code,
               NULL::uuid AS id, NULL::bigint AS count
        FROM placed p
        GROUP BY p.tenant_id, p.task_id, p.slot
        UNION ALL
        SELECT p.tenant_id, p.task_id, p.slot, 'x', NULL, NULL, NULL, NULL, NULL, p.talk, NULL,
               NULL, NULL, sum(p.sign)
        FROM placed p
        WHERE p.talk IS NOT NULL
        GROUP BY p.tenant_id, p.task_id, p.slot, p.talk
        HAVING sum(p.sign) <> 0
        UNION ALL
        SELECT k.tenant_id, k.task_id, k.slot, 'k', NULL, NULL, NULL, NULL, NULL, NULL,
               k.dimension, k.code, k.id, sum(k.sign)
        FROM (
            SELECT p.tenant_id, p.task_id, p.slot, e.dimension, e.code, e.id, p.sign
            FROM placed p
            CROSS JOIN LATERAL call_stats_keys(p.outcome, p.number_status, p.hangup_side,
                                               p.level_id, p.talk_duration_ms, p.dial_time,
                                               p.answer_time) AS e
            UNION ALL
            SELECT t.tenant_id, t.task_id, t.slot, 5::smallint, NULL::smallint, t.tag_id, t.sign
            FROM unnest(tag_changes) AS t
        ) AS k
        GROUP BY k.tenant_id, k.task_id, k.slot, k.dimension, k.code, k.id
        HAVING sum(k.sign) <> 0
    ),
    deltas AS (
        SELECT r.tenant_id, r.task_id, r.slot,
               coalesce(sum(r.calls), 0) AS calls,
               coalesce(sum(r.answered), 0) AS answered,
               coalesce(sum(r.transferred), 0) AS transferred,
               coalesce(sum(r.talk_sum), 0) AS talk_sum,
               coalesce(sum(r.talk_count), 0) AS talk_count,
               min(r.talk) FILTER (WHERE r.kind = 'x' AND r.count > 0) AS added_min,
               max(r.talk) FILTER (WHERE r.kind = 'x' AND r.count > 0) AS added_max,
               min(r.talk) FILTER (WHERE r.kind = 'x' AND r.count < 0) AS removed_min,
               max(r.talk) FILTER (WHERE r.kind = 'x' AND r.count < 0) AS removed_max,
               coalesce(array_agg(r.dimension)
                        FILTER (WHERE r.kind = 'k' AND r.id IS NULL), '{}') AS code_dimensions,
               coalesce(array_agg(r.code)
                        FILTER (WHERE r.kind = 'k' AND r.id IS NULL), '{}') AS codes,
               coalesce(array_agg(r.count)
                        FILTER (WHERE r.kind = 'k' AND r.id IS NULL), '{}') AS code_counts,
               coalesce(array_agg(r.dimension)
                        FILTER (WHERE r.kind = 'k' AND r.id IS NOT NULL), '{}') AS id_dimensions,
               coalesce(array_agg(r.id)
                        FILTER (WHERE r.kind = 'k' AND r.id IS NOT NULL), '{}') AS ids,
               coalesce(array_agg(r.count)
                        FILTER (WHERE r.kind = 'k' AND r.id IS NOT NULL), '{}') AS id_counts
        FROM parts r
        GROUP BY r.tenant_id, r.task_id, r.slot
    )
    INSERT INTO call_stats_deltas (tenant_id, task_id, slot, calls, answered, transferred, talk_sum,
                                   talk_count, added_min, added_max, removed_min, removed_max,
                                   code_dimensions, codes, code_counts, id_dimensions, ids, id_counts)
    SELECT d.tenant_id, d.task_id, d.slot, d.calls, d.answered, d.transferred, d.talk_sum,
           d.talk_count, d.added_min, d.added_max, d.removed_min, d.removed_max,
           d.code_dimensions, d.codes, d.code_counts, d.id_dimensions, d.ids, d.id_counts
    FROM deltas d
    WHERE d.calls <> 0 OR d.answered <> 0 OR d.transferred <> 0 OR d.talk_sum <> 0
       OR d.talk_count <> 0 OR d.added_min IS NOT NULL OR d.removed_min IS NOT NULL
       OR cardinality(d.codes) > 0 OR cardinality(d.ids) > 0;
END
$function$;

-- Statement-level trigger of calls (INSERT, UPDATE, DELETE; transition tables new_rows and
-- old_rows): copies the rows of calls with a task, and hands them to call_stats_append.
CREATE FUNCTION call_stats_calls_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    added call_stats_call[] := '{}';
    removed call_stats_call[] := '{}';
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        added := ARRAY(
            SELECT ROW(n.tenant_id, n.id, n.task_id, n.dial_time, n.answer_time, n.outcome,
                       n.number_status, n.hangup_side, n.level_id, n.transfer_state,
                       n.talk_duration_ms)::call_stats_call
            FROM new_rows n
            WHERE n.task_id IS NOT NULL
            ORDER BY n.id);
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        removed := ARRAY(
            SELECT ROW(o.tenant_id, o.id, o.task_id, o.dial_time, o.answer_time, o.outcome,
                       o.number_status, o.hangup_side, o.level_id, o.transfer_state,
                       o.talk_duration_ms)::call_stats_call
            FROM old_rows o
            WHERE o.task_id IS NOT NULL
            ORDER BY o.id);
    END IF;
    -- Nothing counted changed (an update of other columns, such as appended turns).
    IF added IS NOT DISTINCT FROM removed THEN
        RETURN NULL;
    END IF;
    PERFORM call_stats_append(added, removed, '{}', '{}', TG_OP = 'UPDATE');
    RETURN NULL;
END
$$;

-- Statement-level trigger of call_tags.
CREATE FUNCTION call_stats_call_tags_changed() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    added call_stats_call_tag[] := '{}';
    removed call_stats_call_tag[] := '{}';
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        added := ARRAY(SELECT ROW(n.tenant_id, n.call_id, n.tag_id)::call_stats_call_tag
                       FROM new_rows n);
    END IF;
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        removed := ARRAY(SELECT ROW(o.tenant_id, o.call_id, o.tag_id)::call_stats_call_tag
                         FROM old_rows o);
    END IF;
    IF cardinality(added) + cardinality(removed) > 0 THEN
        PERFORM call_stats_append('{}', '{}', added, removed, false);
    END IF;
    RETURN NULL;
END
$$;

-- Transition tables need one trigger per event. Creating them locks calls and call_tags
-- against writes until this migration commits, so the backfill below sees every call and no
-- write slips in between.
CREATE TRIGGER call_stats_insert AFTER INSERT ON calls
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_stats_calls_changed();
CREATE TRIGGER call_stats_update AFTER UPDATE ON calls
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_stats_calls_changed();
CREATE TRIGGER call_stats_delete AFTER DELETE ON calls
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_stats_calls_changed();
CREATE TRIGGER call_stats_insert AFTER INSERT ON call_tags
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_stats_call_tags_changed();
CREATE TRIGGER call_stats_update AFTER UPDATE ON call_tags
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_stats_call_tags_changed();
CREATE TRIGGER call_stats_delete AFTER DELETE ON call_tags
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION call_stats_call_tags_changed();

-- Backfill: the calls stored before this migration, compacted directly.
WITH spans (span) AS (
    VALUES (60), (3600), (86400)
),
totals AS (
    SELECT c.tenant_id, c.task_id, s.span, call_stats_bucket(c.dial_time, s.span) AS bucket,
           count(*) AS calls,
           count(*) FILTER (WHERE call_stats_answered(c.outcome)) AS answered,
           count(*) FILTER (WHERE call_stats_transferred(c.transfer_state)) AS transferred,
           coalesce(sum(call_stats_talk(c.outcome, c.talk_duration_ms)), 0) AS talk_sum,
           count(call_stats_talk(c.outcome, c.talk_duration_ms)) AS talk_count,
           min(call_stats_talk(c.outcome, c.talk_duration_ms)) AS talk_min,
           max(call_stats_talk(c.outcome, c.talk_duration_ms)) AS talk_max
    FROM calls c
    CROSS JOIN spans s
    WHERE c.task_id IS NOT NULL
    GROUP BY 1, 2, 3, 4
),
keyed AS (
    SELECT c.tenant_id, c.task_id, c.dial_time, k.dimension, k.code, k.id
    FROM calls c
    CROSS JOIN LATERAL call_stats_keys(c.outcome, c.number_status, c.hangup_side, c.level_id,
                                       c.talk_duration_ms, c.dial_time, c.answer_time) AS k
    WHERE c.task_id IS NOT NULL
    UNION ALL
    SELECT c.tenant_id, c.task_id, c.dial_time, 5::smallint, NULL::smallint, t.tag_id
    FROM call_tags t
    JOIN calls c ON c.tenant_id = t.tenant_id AND c.id = t.call_id
    WHERE c.task_id IS NOT NULL
),
counted AS (
    SELECT k.tenant_id, k.task_id, s.span, call_stats_bucket(k.dial_time, s.span) AS bucket,
           k.dimension, k.code, k.id, count(*) AS count
    FROM keyed k
    CROSS JOIN spans s
    GROUP BY 1, 2, 3, 4, 5, 6, 7
),
packed AS (
    SELECT tenant_id, task_id, span, bucket,
           coalesce(array_agg(dimension) FILTER (WHERE id IS NULL), '{}') AS code_dimensions,
           coalesce(array_agg(code) FILTER (WHERE id IS NULL), '{}') AS codes,
           coalesce(array_agg(count) FILTER (WHERE id IS NULL), '{}') AS code_counts,
           coalesce(array_agg(dimension) FILTER (WHERE id IS NOT NULL), '{}') AS id_dimensions,
           coalesce(array_agg(id) FILTER (WHERE id IS NOT NULL), '{}') AS ids,
           coalesce(array_agg(count) FILTER (WHERE id IS NOT NULL), '{}') AS id_counts
    FROM counted
    GROUP BY 1, 2, 3, 4
)
INSERT INTO call_stats_buckets (tenant_id, task_id, span, bucket, calls, answered, transferred,
                                talk_sum, talk_count, talk_min, talk_max, code_dimensions, codes,
                                code_counts, id_dimensions, ids, id_counts)
SELECT t.tenant_id, t.task_id, t.span, t.bucket, t.calls, t.answered, t.transferred, t.talk_sum,
       t.talk_count, t.talk_min, t.talk_max,
       coalesce(p.code_dimensions, '{}'), coalesce(p.codes, '{}'), coalesce(p.code_counts, '{}'),
       coalesce(p.id_dimensions, '{}'), coalesce(p.ids, '{}'), coalesce(p.id_counts, '{}')
FROM totals t
LEFT JOIN packed p
  ON p.tenant_id = t.tenant_id AND p.task_id = t.task_id AND p.span = t.span AND p.bucket = t.bucket;
