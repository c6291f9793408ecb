-- Version 15: which tokens a client may introspect (`latch_core::client::Introspects`):
-- `any` token of its tenant (a resource server; every client registered before this
-- version keeps that), or only its `own`.
ALTER TABLE clients ADD COLUMN introspects TEXT NOT NULL DEFAULT 'any'
    CHECK (introspects IN ('any', 'own'));
