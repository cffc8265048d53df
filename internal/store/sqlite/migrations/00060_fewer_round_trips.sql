-- PostgreSQL's 00060 adds functions that save round trips on the hot
-- paths. SQLite runs in-process, where a statement costs none, so there is
-- nothing to add; this migration keeps the schema versions of the two
-- drivers in step (build_info reports schema_version).

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
