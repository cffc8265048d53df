-- PostgreSQL's 00100 rewrites oa_append_group as set-based statements.
-- SQLite has no functions; this migration keeps the schema versions of the
-- two drivers in step.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
