-- PostgreSQL's 00080 adds oa_write_projections (the projector's page of
-- writes in a few set-based statements). SQLite has no functions to add;
-- this migration keeps the schema versions of the two drivers in step.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
