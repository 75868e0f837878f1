-- The feed notification names the greatest ordering key the transaction wrote for the tenant
-- (`tenant key`), so a tailer that finds those rows still held back by an older transaction
-- knows to read again soon, without scanning the feed for rows above the watermark (a scan that
-- visits every row of transactions in progress and checks each against the process array).
CREATE OR REPLACE FUNCTION feed_events_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('callstore_feed', written.tenant_id || ' ' || written.last_key::text)
    FROM (SELECT tenant_id, max(tx_id) AS last_key FROM new_events GROUP BY tenant_id) AS written;
    RETURN NULL;
END
$$;
