/*
 * celloattr--1.0--1.1.sql: from 1.0 to 1.1.
 *
 * Every change here is also in celloattr--1.1.sql, at the place where a
 * fresh install gets it; t/011_upgrade.pl checks that both give the same
 * schema.  New columns go at the end of their table in both scripts, since
 * ALTER TABLE ADD COLUMN appends.
 */

\echo Use "ALTER EXTENSION celloattr UPDATE TO '1.1'" to load this file. \quit
