-- PostgreSQL's 00070 adds oa_append_group, the group commit of appends from
-- many runs. SQLite runs in-process with one writer, so there is nothing to
-- add; this migration keeps the schema versions of the two drivers in step.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
