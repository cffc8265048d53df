-- PostgreSQL's 00070 adds the functions of its group commit (appends of
-- many runs, frames of many runs in one call). SQLite runs in-process with
-- one writer, so there is nothing to add; this migration keeps the schema
-- versions of the two drivers in step.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
