-- ListCalls: transcript search and keyset orders.

-- What each speaker said in a call, for the transcript filter ("calls where the customer said
-- 不需要"). One row per call and speaker: the speaker's turns, lower-cased, one per line.
--
-- Chinese has no word boundaries and the needles people search for are often one or two
-- characters (好, 不要), which trigram indexes (pg_trgm) cannot serve: a two-character LIKE needle
-- yields no trigram and scans the whole index. So the index keys are the text's 1- and
-- 2-character grams instead: a needle of one character is looked up by itself, a longer one by
-- all its 2-character grams, and `strpos` on `text` confirms the exact substring.
--
-- `grams` holds 32-bit FNV-1a hashes of (tenant id, gram), computed by the service
-- (src/domain/transcript.rs), sorted and distinct: salting with the tenant keeps each tenant's
-- posting lists apart, and a hash collision only costs a recheck, never a wrong answer. The
-- index leads with tenant_id like every other (btree_gin provides GIN support for text).
CREATE TABLE call_transcripts (
    tenant_id text     NOT NULL,
    call_id   uuid     NOT NULL,
    speaker   smallint NOT NULL,
    text      text     NOT NULL,
    grams     integer[] NOT NULL,
    PRIMARY KEY (tenant_id, call_id, speaker)
);

CREATE EXTENSION IF NOT EXISTS btree_gin;

CREATE INDEX call_transcripts_grams_idx ON call_transcripts USING gin (tenant_id, grams);

-- Keyset orders of ListCalls besides dial time. A call without a score, talk time or rounds
-- sorts as the lowest value (last in the default descending order); `coalesce` makes the sort key
-- total, so a page token (key, id) is always comparable. Within a task, and across the tenant.
DROP INDEX calls_task_score_idx;
DROP INDEX calls_task_talk_idx;
DROP INDEX calls_task_rounds_idx;

CREATE INDEX calls_task_score_idx ON calls
    (tenant_id, task_id, (coalesce(score, -9223372036854775808)), id);
CREATE INDEX calls_task_talk_idx ON calls
    (tenant_id, task_id, (coalesce(talk_duration_ms, -9223372036854775808)), id);
CREATE INDEX calls_task_rounds_idx ON calls
    (tenant_id, task_id, (coalesce(rounds, -2147483648)), id);
