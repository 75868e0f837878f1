-- Changes of one call come in the order they were made. The feed is ordered by `tx_id`; a
-- transaction that took its transaction id early (writing something else first) and then waited
-- for another transaction's lock on the call would otherwise sort its later change of the call
-- before the earlier one. So `tx_id` becomes an ordering key: the writer's transaction id, or
-- the key of the call's previous event when that is greater (kept in `calls.feed_tx`). It is
-- never below the writer's id, so the watermark still holds the row back while its writer is in
-- progress. `writer_tx` keeps the writer's own id, for telling whether a snapshot saw the
-- change.
ALTER TABLE feed_events ADD COLUMN writer_tx xid8;
UPDATE feed_events SET writer_tx = tx_id;
ALTER TABLE feed_events
    ALTER COLUMN writer_tx SET DEFAULT pg_current_xact_id(),
    ALTER COLUMN writer_tx SET NOT NULL;

-- The ordering key of the call's last event.
ALTER TABLE calls ADD COLUMN feed_tx xid8;
UPDATE calls c SET feed_tx = (SELECT max(f.tx_id) FROM feed_events f
                              WHERE f.tenant_id = c.tenant_id AND f.call_id = c.id);
