/*
 * celloattr--1.0--1.1.sql: from 1.0 to 1.1.
 *
 * Every change here is also in celloattr--1.1.sql, at the place where a
 * fresh install gets it; t/011_upgrade.pl checks that both give the same
 * schema.  New columns go at the end of their table in both scripts, since
 * ALTER TABLE ADD COLUMN appends.
 */

\echo Use "ALTER EXTENSION celloattr UPDATE TO '1.1'" to load this file. \quit

/*
 * A restore of a dump brings the installation's row back beside the one that
 * CREATE EXTENSION has just made.  The older row is the installation the
 * queued work belongs to: it stays, so a restored database keeps its
 * idempotency keys, and follow-up steps are never made once per row.
 */
CREATE FUNCTION celloattr._keep_first_installation()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM celloattr.installation
	 WHERE install_id <> (SELECT install_id FROM celloattr.installation
						   ORDER BY created_at, install_id LIMIT 1);
	RETURN NULL;
END
$$;
CREATE TRIGGER keep_first_installation
	AFTER INSERT ON celloattr.installation
	FOR EACH STATEMENT EXECUTE FUNCTION celloattr._keep_first_installation();
REVOKE ALL ON FUNCTION celloattr._keep_first_installation() FROM PUBLIC;

/* A database restored under 1.0 holds both rows already. */
DELETE FROM celloattr.installation
 WHERE install_id <> (SELECT install_id FROM celloattr.installation
					   ORDER BY created_at, install_id LIMIT 1);
