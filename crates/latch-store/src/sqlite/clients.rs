//! [`ClientStore`] on SQLite.

use std::collections::HashSet;
use std::sync::LazyLock;

use async_trait::async_trait;
use latch_core::audit::{AuditContext, AuditEvent};
use latch_core::client::{
    AccessTokenRevocation, AuthMethod, Client, GrantType, Introspects, SecretHash,
};
use latch_core::clock::UnixTime;
use latch_core::id::{ClientId, TenantId};
use latch_core::scope::Scope;
use latch_core::store::{ClientPage, ClientStore, StoreResult};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{join, live_clients, ClientGrantsRevocation, Removal, SqliteStore, SubjectLogout};

const COLUMNS: &str = "tenant_id, client_id, secret_hash, auth_method, grant_types, scope, \
     redirect_uris, access_token_ttl, refresh_token_ttl, rotation_grace, \
     access_token_revocation, created_at, declared, introspects";

/// How many columns [`COLUMNS`] names.
pub(super) const COLUMN_COUNT: usize = 14;

/// One client, on a connection already chosen.
pub(super) fn select_client(
    c: &Connection,
    tenant: &TenantId,
    id: &ClientId,
) -> rusqlite::Result<Option<Client>> {
    // Built once: this runs on every authenticated request.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!("SELECT {COLUMNS} FROM clients WHERE tenant_id = ?1 AND client_id = ?2")
    });
    c.prepare_cached(&SQL)?
        .query_row([tenant.as_str(), id.as_str()], client_from_row)
        .optional()
}

fn corrupt(col: usize, what: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(col, Type::Text, what.to_owned().into())
}

fn client_from_row(r: &Row<'_>) -> rusqlite::Result<Client> {
    client_at(r, 0)
}

/// The client columns qualified by a table alias (`c.tenant_id, c.client_id, …`), for a
/// statement that joins them with other tables; [`client_at`] reads them.
pub(super) fn qualified_columns(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|column| format!("{alias}.{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a client from the row's [`COLUMN_COUNT`] columns from `base` on, in [`COLUMNS`]
/// order.
pub(super) fn client_at(r: &Row<'_>, base: usize) -> rusqlite::Result<Client> {
    let secret = r
        .get::<_, Option<String>>(base + 2)?
        .map(SecretHash::from_stored);
    let auth_method = AuthMethod::parse(&r.get::<_, String>(base + 3)?)
        .map_err(|_| corrupt(base + 3, "auth_method"))?;
    let grant_types = r
        .get::<_, String>(base + 4)?
        .split(' ')
        .filter_map(GrantType::parse)
        .collect();
    let redirect_uris = r
        .get::<_, String>(base + 6)?
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let access_token_revocation = AccessTokenRevocation::parse(&r.get::<_, String>(base + 10)?)
        .map_err(|_| corrupt(base + 10, "access_token_revocation"))?;
    let introspects = Introspects::parse(&r.get::<_, String>(base + 13)?)
        .map_err(|_| corrupt(base + 13, "introspects"))?;
    Ok(Client {
        tenant: TenantId::from_stored(r.get(base)?),
        id: ClientId::from_stored(r.get(base + 1)?),
        secret,
        auth_method,
        grant_types,
        scope: Scope::from_stored(r.get::<_, String>(base + 5)?),
        redirect_uris,
        access_token_ttl: r.get(base + 7)?,
        refresh_token_ttl: r.get(base + 8)?,
        rotation_grace: r.get(base + 9)?,
        access_token_revocation,
        introspects,
        created_at: r.get(base + 11)?,
        declared: r.get(base + 12)?,
    })
}

/// A client's columns, owned, so they can travel to the writer thread.
struct ClientRow {
    tenant_id: String,
    client_id: String,
    secret_hash: Option<String>,
    auth_method: &'static str,
    grant_types: String,
    scope: String,
    redirect_uris: String,
    access_token_ttl: u32,
    refresh_token_ttl: u32,
    rotation_grace: u32,
    access_token_revocation: &'static str,
    created_at: UnixTime,
    declared: bool,
    introspects: &'static str,
}

impl ClientRow {
    fn of(c: &Client) -> Self {
        Self {
            tenant_id: c.tenant.to_string(),
            client_id: c.id.to_string(),
            secret_hash: c.secret.as_ref().map(|s| s.as_str().to_owned()),
            auth_method: c.auth_method.as_str(),
            grant_types: join(c.grant_types.iter().map(|g| g.as_str())),
            scope: c.scope.to_string(),
            redirect_uris: join(&c.redirect_uris),
            access_token_ttl: c.access_token_ttl,
            refresh_token_ttl: c.refresh_token_ttl,
            rotation_grace: c.rotation_grace,
            access_token_revocation: c.access_token_revocation.as_str(),
            created_at: c.created_at,
            declared: c.declared,
            introspects: c.introspects.as_str(),
        }
    }

    /// Inserts the row; `on_conflict` says what a row already stored under its id does.
    fn insert(&self, c: &rusqlite::Connection, on_conflict: &str) -> rusqlite::Result<usize> {
        c.prepare_cached(&format!(
            "INSERT INTO clients ({COLUMNS}) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) {on_conflict}"
        ))?
        .execute(params![
            self.tenant_id,
            self.client_id,
            self.secret_hash,
            self.auth_method,
            self.grant_types,
            self.scope,
            self.redirect_uris,
            self.access_token_ttl,
            self.refresh_token_ttl,
            self.rotation_grace,
            self.access_token_revocation,
            self.created_at,
            self.declared,
            self.introspects,
        ])
    }
}

#[async_trait]
impl ClientStore for SqliteStore {
    async fn client(&self, tenant: &TenantId, id: &ClientId) -> StoreResult<Option<Client>> {
        let (tenant, id) = (tenant.clone(), id.clone());
        self.read_batched(move |c, memo| {
            memo.client_or_read(&tenant, &id, || select_client(c, &tenant, &id))
        })
        .await
    }

    async fn list_clients(
        &self,
        tenant: &TenantId,
        page: Option<&ClientPage>,
    ) -> StoreResult<Vec<Client>> {
        let after = page
            .and_then(|p| p.after.as_ref())
            .map(|a| a.as_str().to_owned());
        // A negative LIMIT is none.
        let limit = page.map_or(-1, |p| i64::from(p.limit));
        let tenant = tenant.clone();
        let list = move |c: &Connection| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM clients WHERE tenant_id = ?1 \
                 AND (?2 IS NULL OR client_id > ?2) ORDER BY client_id LIMIT ?3"
            ))?;
            let rows = stmt.query_map(params![tenant.as_str(), after, limit], client_from_row)?;
            rows.collect()
        };
        match page {
            // A page is short; the whole list (the metadata's scopes, which anyone may ask
            // for) may not be, and would hold an async worker meanwhile.
            None => self.read_off_workers(list).await,
            Some(_) => self.read(list),
        }
    }

    async fn create_client(&self, client: &Client) -> StoreResult<()> {
        let row = ClientRow::of(client);
        self.write(move |c| {
            live_clients::forget();
            row.insert(c, "").map(|_| ())
        })
        .await
    }

    async fn upsert_client(&self, client: &Client) -> StoreResult<()> {
        let row = ClientRow::of(client);
        self.write(move |c| {
            live_clients::forget();
            row.insert(c, crate::client_sql::REPLACE_SETTINGS)
                .map(|_| ())
        })
        .await
    }

    async fn undeclare_clients_except(
        &self,
        declared: &[(TenantId, ClientId)],
    ) -> StoreResult<Vec<(TenantId, ClientId)>> {
        let keep: HashSet<(String, String)> = declared
            .iter()
            .map(|(t, i)| (t.to_string(), i.to_string()))
            .collect();
        self.write(move |c| {
            let stored = c
                .prepare_cached("SELECT tenant_id, client_id FROM clients WHERE declared")?
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut undeclared = Vec::new();
            for key in stored.into_iter().filter(|k| !keep.contains(k)) {
                c.execute(
                    "UPDATE clients SET declared = 0 WHERE tenant_id = ?1 AND client_id = ?2",
                    params![key.0, key.1],
                )?;
                undeclared.push((TenantId::from_stored(key.0), ClientId::from_stored(key.1)));
            }
            Ok(undeclared)
        })
        .await
    }

    async fn set_client_secret(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        replaced: &SecretHash,
        secret: &SecretHash,
    ) -> StoreResult<bool> {
        let (t, i, r, s) = (
            tenant.to_string(),
            id.to_string(),
            replaced.as_str().to_owned(),
            secret.as_str().to_owned(),
        );
        self.write(move |c| {
            live_clients::forget();
            Ok(c.execute(
                "UPDATE clients SET secret_hash = ?4 \
                 WHERE tenant_id = ?1 AND client_id = ?2 AND secret_hash = ?3 AND NOT declared",
                params![t, i, r, s],
            )? > 0)
        })
        .await
    }

    async fn delete_client(
        &self,
        tenant: &TenantId,
        id: &ClientId,
        audit: &AuditContext,
    ) -> StoreResult<Option<Option<AuditEvent>>> {
        // Recorded as under way, its grants are then revoked in chunks, other writes passing
        // in between, and its row goes with the last (`removals`).
        let removal = Removal::client(tenant, id);
        let (t, i) = (tenant.to_string(), id.to_string());
        let now = audit.at;
        let (begin, audit) = (removal.clone(), audit.clone());
        let begun = self
            .write(move |c| {
                let declared: Option<bool> = c
                    .prepare_cached(
                        "SELECT declared FROM clients WHERE tenant_id = ?1 AND client_id = ?2",
                    )?
                    .query_row(params![t, i], |r| r.get(0))
                    .optional()?;
                if declared != Some(false) {
                    return Ok(false);
                }
                begin.begin(c, &audit)?;
                Ok(true)
            })
            .await?;
        if !begun {
            return Ok(None);
        }
        // `None` if another caller (removing it too) wrote its record: removed all the same.
        Ok(Some(self.run_removal(removal, now).await?))
    }

    async fn finish_interrupted_removals(&self, now: UnixTime) -> StoreResult<Vec<AuditEvent>> {
        let under_way = self.read(Removal::all_under_way)?;
        let mut events = Vec::with_capacity(under_way.len());
        for removal in under_way {
            tracing::warn!(%removal, "finishing a removal that was interrupted");
            // One that fails stays under way (its client in place), for the next start or a
            // removal asked again; the others still run.
            match self.run_removal(removal.clone(), now).await {
                Ok(event) => events.extend(event),
                Err(e) => tracing::error!(%removal, error = %e, "the removal did not finish"),
            }
        }
        // The removals' records are the caller's to log, whatever happens here.
        let under_way = match self.read(ClientGrantsRevocation::all_under_way) {
            Ok(under_way) => under_way,
            Err(e) => {
                tracing::error!(error = %e, "the revocations under way could not be read");
                Vec::new()
            }
        };
        for revocation in under_way {
            tracing::warn!(%revocation, "finishing a revocation that was interrupted");
            let mut recorded = |event| events.push(event);
            let run = self.run_client_grants_revocation(revocation.clone(), now, &mut recorded);
            if let Err(e) = run.await {
                tracing::error!(%revocation, error = %e, "the revocation did not finish");
            }
        }
        let under_way = match self.read(SubjectLogout::all_under_way) {
            Ok(under_way) => under_way,
            Err(e) => {
                tracing::error!(error = %e, "the log-outs under way could not be read");
                Vec::new()
            }
        };
        for logout in under_way {
            tracing::warn!(%logout, "finishing a log-out that was interrupted");
            match self.run_subject_logout(logout.clone(), now).await {
                Ok(event) => events.extend(event),
                Err(e) => tracing::error!(%logout, error = %e, "the log-out did not finish"),
            }
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_count_matches_the_column_list() {
        assert_eq!(COLUMNS.split(", ").count(), COLUMN_COUNT);
        assert!(qualified_columns("c").starts_with("c.tenant_id, c.client_id, "));
    }

    /// The whole list of a tenant's clients (read for the public metadata) is read off the
    /// async worker: on a one-thread runtime whose one blocking thread is held until another
    /// task runs, the read (queued behind it) ends only after that task ran. Read on the
    /// runtime's thread, it would end before that task ever ran.
    #[test]
    fn the_whole_list_is_read_off_the_async_worker() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = SqliteStore::open_memory().unwrap();
            let (release, held) = std::sync::mpsc::channel::<()>();
            let holder = tokio::task::spawn_blocking(move || held.recv());
            let ran = Arc::new(AtomicBool::new(false));
            let other = tokio::spawn({
                let ran = ran.clone();
                async move {
                    ran.store(true, Ordering::SeqCst);
                    release.send(()).unwrap();
                }
            });
            let tenant = TenantId::default_tenant();
            store.list_clients(&tenant, None).await.unwrap();
            assert!(ran.load(Ordering::SeqCst), "read on the runtime's thread");
            other.await.unwrap();
            holder.await.unwrap().unwrap();
        });
    }
}
