/*
 * wake_latency: COMMIT of one attribution, then its first request at the
 * fake.  Prints "i commit_returned_unix" per attribution; bench/run joins
 * these with the fake's arrival times.  The worker is idle before each one.
 *
 *   wake_latency "conninfo" N
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

static double
now_unix(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	PGconn	   *conn;
	int			n;

	if (argc != 3)
	{
		fprintf(stderr, "usage: %s conninfo N\n", argv[0]);
		return 2;
	}
	n = atoi(argv[2]);
	conn = PQconnectdb(argv[1]);
	if (PQstatus(conn) != CONNECTION_OK)
	{
		fprintf(stderr, "%s", PQerrorMessage(conn));
		return 1;
	}
	for (int i = 0; i < n; i++)
	{
		char		sql[256];
		PGresult   *res;
		double		t;

		usleep(50 * 1000);		/* let the worker go idle */
		snprintf(sql, sizeof(sql),
				 "SELECT celloattr.cello_attribute('pNRB1aYqArN', 'wake-%d', 'stripe', customer_id => 'cus_wake_%d')",
				 i, i);
		/* autocommit: the result arrives after the commit */
		res = PQexec(conn, sql);
		t = now_unix();
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
		{
			fprintf(stderr, "%s", PQerrorMessage(conn));
			return 1;
		}
		PQclear(res);
		printf("%d %.6f\n", i, t);
	}
	PQfinish(conn);
	return 0;
}
