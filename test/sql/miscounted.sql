-- test/sql/miscounted.sql: the batches whose counts behind celloattr.progress
-- and whose attributions differ, as a temporary view (sql/operations and
-- t/026_progress.pl).
CREATE TEMP VIEW miscounted AS
SELECT x.batch FROM (
	SELECT c.batch, c.queued, c.running, c.done, c.needs_support, c.failed, c.cancelled,
		   c.planned, c.stripe_unfinished, c.chargebee_unfinished, c.signup_unfinished
	  FROM celloattr.batch_counts c
	UNION ALL
	SELECT a.batch, -(a.state = 'queued')::int, -(a.state = 'running')::int,
		   -(a.state = 'done')::int, -(a.state = 'needs_support')::int, -(a.state = 'failed')::int,
		   -(a.state = 'cancelled')::int, -(a.state = 'planned')::int,
		   -(a.state IN ('queued', 'running') AND a.gateway = 'stripe')::int,
		   -(a.state IN ('queued', 'running') AND a.gateway = 'chargebee')::int,
		   -(a.state IN ('queued', 'running') AND a.signup_via_api)::int
	  FROM celloattr.attributions a WHERE a.batch IS NOT NULL
) x(batch, q, r, d, n, f, c, p, s, b, u)
 GROUP BY x.batch
HAVING sum(q) <> 0 OR sum(r) <> 0 OR sum(d) <> 0 OR sum(n) <> 0 OR sum(f) <> 0 OR sum(c) <> 0
	OR sum(p) <> 0 OR sum(s) <> 0 OR sum(b) <> 0 OR sum(u) <> 0;
