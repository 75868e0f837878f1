-- A quality result's details are written once per result and read back whole, never searched
-- inside: store them as `json` (the text, checked) rather than `jsonb` (parsed into a tree).
-- Ingest writes one result per call with a dialogue; as `json` each costs Postgres less to
-- take in and about 40 % less space (and WAL) for their typical shape (many small objects
-- with repeated keys). Nothing reads them with jsonb operators; the rule hits are filtered
-- through `hit_rule_ids`.
--
-- The table is rewritten: on a large table, run it in a maintenance window.
ALTER TABLE quality_results ALTER COLUMN details TYPE json USING details::json;
ALTER TABLE quality_results ALTER COLUMN details SET DEFAULT '{}'::json;
