-- PostgreSQL's 00120 tunes the planning of a PL/pgSQL function. SQLite has
-- no functions; this migration keeps the schema versions of the two drivers
-- in step.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
