//! SQL both back-ends share for clients.

/// How writing a client the configuration file declares treats one already stored under its
/// id: every setting is replaced, and the row is kept, with its `created_at` (a delete and
/// insert, SQLite's `INSERT OR REPLACE`, gave it the time of the node's last start).
pub(crate) const REPLACE_SETTINGS: &str = "ON CONFLICT (tenant_id, client_id) DO UPDATE SET \
       secret_hash = excluded.secret_hash, auth_method = excluded.auth_method, \
       grant_types = excluded.grant_types, scope = excluded.scope, \
       redirect_uris = excluded.redirect_uris, \
       access_token_ttl = excluded.access_token_ttl, \
       refresh_token_ttl = excluded.refresh_token_ttl, \
       rotation_grace = excluded.rotation_grace, \
       access_token_revocation = excluded.access_token_revocation, \
       introspects = excluded.introspects, declared = excluded.declared";
