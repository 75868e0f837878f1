-- Ingest now writes a computed quality result for every call with a dialogue, so
-- quality_results joins the hot path; like the tables of 20261122000001, it loses what only
-- costs there:
-- * its foreign key to calls: results are written only with their call's row locked by the
--   same transaction (ingest wrote it, a re-score or an import selected it FOR UPDATE), and
--   calls are never deleted; the check was a locked lookup of the call for every row;
-- * the index on (tenant_id, score), which no query reads: the call list and statistics read
--   a call's latest computed result through quality_results_version_key.
ALTER TABLE quality_results DROP CONSTRAINT quality_results_tenant_id_call_id_fkey;
DROP INDEX quality_results_score_idx;
