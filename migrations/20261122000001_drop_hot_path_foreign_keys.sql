-- Foreign keys on the tables ingest writes for every call, dropped for throughput.
--
-- Calls, their turns, call tags, turn tags and feed events are written only by the ingest
-- write path (src/db/calls.rs), in one transaction that first ensures the tenant and resolves
-- (or creates) the task, level and tags the call refers to; it also deletes a call's turns and
-- tags itself when it replaces them. Tenants, tasks, levels and tags are never deleted. So the
-- references hold by construction, and the checks only cost:
-- * a locked index lookup for every row — most rows ingest writes are turns;
-- * a plan made once per connection: planned while `calls` was small, the lookup is a
--   sequential scan that stays cached as the table grows (until autovacuum analyses it);
-- * shared row locks that every concurrent transaction takes on the same few parent rows (the
--   tenant, a busy task, a level), which Postgres turns into MultiXacts rewritten on each lock.
ALTER TABLE turns DROP CONSTRAINT turns_tenant_id_call_id_fkey;
ALTER TABLE call_tags DROP CONSTRAINT call_tags_tenant_id_call_id_fkey;
ALTER TABLE call_tags DROP CONSTRAINT call_tags_tenant_id_tag_id_fkey;
ALTER TABLE turn_tags DROP CONSTRAINT turn_tags_tenant_id_call_id_sequence_fkey;
ALTER TABLE turn_tags DROP CONSTRAINT turn_tags_tenant_id_tag_id_fkey;
ALTER TABLE calls DROP CONSTRAINT calls_tenant_id_fkey;
ALTER TABLE calls DROP CONSTRAINT calls_tenant_id_task_id_fkey;
ALTER TABLE calls DROP CONSTRAINT calls_tenant_id_level_id_fkey;
ALTER TABLE feed_events DROP CONSTRAINT feed_events_tenant_id_fkey;
