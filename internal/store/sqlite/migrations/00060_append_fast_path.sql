-- PostgreSQL's 00060 adds oa_append_fast, the one-round-trip append. SQLite
-- runs in-process, where a statement costs no round trip, so there is
-- nothing to add; this migration keeps the schema versions of the two
-- drivers in step (build_info reports schema_version).

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
