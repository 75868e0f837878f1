-- ListCalls `transferred = true`: few calls reach a human, so walking a task's calls by dial
-- time to find a page of them reads most of the task (1.2 s on a task of 1,000,000 calls).
-- A partial index holds just those calls, in the list's default order. The list statement
-- writes the predicate with the same literal (`transfer_state >= 2`: NOT_ANSWERED or
-- ANSWERED), so the planner can match it.
CREATE INDEX calls_transferred_idx ON calls (tenant_id, task_id, dial_time DESC, id DESC)
    WHERE transfer_state >= 2;
