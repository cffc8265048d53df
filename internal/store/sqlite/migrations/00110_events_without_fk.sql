-- PostgreSQL's 00110 drops run_events' foreign key (a per-row check on its
-- hot append path). SQLite keeps it: its one writer makes the check cheap.
-- This migration keeps the schema versions of the two drivers in step.

-- +goose Up
SELECT 1;

-- +goose Down
SELECT 1;
