-- The set-based functions (oa_write_projections, 00080) take arrays, and
-- PL/pgSQL planned each of their statements again on every call: a custom
-- plan sees the arrays' sizes and so always looks cheaper than the generic
-- one, and it is kept. Planning their few statements cost more than running
-- them for a small page. They now keep one generic plan per session, and,
-- as oa_append_group (00100), stay off sequential scans, hash and merge
-- joins: a generic plan made while a table is young would otherwise keep a
-- sequential scan of it (seen: the checkpoint MERGE scanning the table).

-- +goose Up
ALTER FUNCTION oa_write_projections(text[], text[], text[], text[], text[], text[], bigint[], text[], text[], text[], boolean[], bigint[])
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION oa_write_projections(text[], text[], text[], text[], text[], text[], bigint[], text[], text[], text[], boolean[], bigint[])
    SET enable_seqscan = off;
ALTER FUNCTION oa_write_projections(text[], text[], text[], text[], text[], text[], bigint[], text[], text[], text[], boolean[], bigint[])
    SET enable_hashjoin = off;
ALTER FUNCTION oa_write_projections(text[], text[], text[], text[], text[], text[], bigint[], text[], text[], text[], boolean[], bigint[])
    SET enable_mergejoin = off;

-- +goose Down
ALTER FUNCTION oa_write_projections(text[], text[], text[], text[], text[], text[], bigint[], text[], text[], text[], boolean[], bigint[])
    RESET ALL;
