-- Row-level security on every tenant table: defense in depth behind the service's own
-- `tenant_id` filters. A transaction sees (and may write) the rows of the tenant it names with
-- `SET LOCAL callstore.tenant`, or every tenant's rows when it sets
-- `SET LOCAL callstore.all_tenants = 'on'` (the service's background work across tenants);
-- with neither it sees nothing. `db::begin` opens every transaction this way.
--
-- FORCE makes the policies bind the tables' owner too, so the role that ran the migrations may
-- also be the one the service connects as. A superuser or a BYPASSRLS role is not bound by any
-- policy; the service warns at startup when it connects as one.
--
-- Each setting is read once per statement (a scalar subquery becomes an InitPlan), not once
-- per row. Foreign-key and unique checks are not subject to policies.
--
-- A later migration that reads or writes rows of these tables must set one of the two first.
DO $$
DECLARE
    tenant_table text;
BEGIN
    FOREACH tenant_table IN ARRAY ARRAY[
        'tenants', 'tasks', 'task_numbers', 'call_attempts', 'tag_groups', 'tags',
        'tag_group_members', 'levels', 'calls', 'turns', 'call_tags', 'turn_tags',
        'quality_results', 'feed_events', 'call_transcripts', 'call_stats_deltas',
        'call_stats_buckets', 'feed_horizons', 'scoring_profiles', 'rule_sets',
        'rule_set_versions', 'rescore_jobs', 'api_keys'
    ] LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', tenant_table);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', tenant_table);
        EXECUTE format(
            $policy$
            CREATE POLICY tenant_isolation ON %I
                USING (
                    tenant_id = (SELECT current_setting('callstore.tenant', true))
                    OR (SELECT current_setting('callstore.all_tenants', true)) = 'on'
                )
            $policy$,
            tenant_table
        );
    END LOOP;
END
$$;
