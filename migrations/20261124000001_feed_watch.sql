-- The live feed (WatchService). Each replica's tailer LISTENs on `callstore_feed`; a transaction
-- that wrote feed events notifies it at commit, once per tenant (Postgres folds repeats of the
-- same payload within a transaction). The tailers also poll, so a lost notification only delays.
CREATE FUNCTION feed_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('callstore_feed', tenants.tenant_id)
    FROM (SELECT DISTINCT tenant_id FROM new_events) AS tenants;
    RETURN NULL;
END
$$;

CREATE TRIGGER feed_events_notify
    AFTER INSERT ON feed_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION feed_events_notify();

-- How far retention has pruned each tenant's feed: the greatest (tx_id, id) deleted. A cursor
-- before it may have lost events, so resuming from it is refused (re-snapshot instead).
CREATE TABLE feed_horizons (
    tenant_id   text        PRIMARY KEY REFERENCES tenants (tenant_id),
    tx_id       xid8        NOT NULL,
    id          bigint      NOT NULL,
    update_time timestamptz NOT NULL DEFAULT now()
);
