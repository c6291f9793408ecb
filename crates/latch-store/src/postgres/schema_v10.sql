-- Version 10: which tokens a client may introspect (`latch_core::client::Introspects`), as
-- SQLite's version 15: `any` token of its tenant (a resource server; every client
-- registered before this version keeps that), or only its `own`. Adding a column with a
-- constant default rewrites nothing. Safe for older nodes: they read the columns they name,
-- and let every client introspect any token of its tenant, as before (so give a client
-- `own` once every node knows it).
ALTER TABLE clients ADD COLUMN introspects TEXT NOT NULL DEFAULT 'any'
    CHECK (introspects IN ('any', 'own'));
