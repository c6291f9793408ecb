//! The clean-up's deletes on PostgreSQL (`CleanupStore`), run on a pooled connection of
//! their own rather than by the committer, whose transaction they would lengthen for every
//! write of the node. A sweep leaves a row another node's transaction holds locked (a long
//! removal) for its next run instead of waiting for it (`SKIP LOCKED`, see
//! `sweep_delete_sql`). Each statement commits on its own: a sweep batch reads the key its
//! range ends at and deletes the expired rows in that range, which a write between the two
//! cannot make wrong (the delete checks expiry itself, and no write makes an expired row
//! live again); other nodes' clean-ups already ran beside this node's writes.

use latch_core::clock::UnixTime;
use latch_core::id::GrantId;
use latch_core::store::{Purged, Sweep};
use latch_core::token::TokenHash;
use tokio_postgres::types::ToSql;
use tokio_postgres::GenericClient;

use crate::cleanup_sql::{
    next_sweep, purge_audit_sql, sweep_delete_sql, sweep_end_sql, swept, token_sweep_end, SweepKey,
    Swept, AUDIT_PURGE_HEAD,
};

/// One batch of an expiry sweep (`CleanupStore::purge_expired`): deletes the expired rows
/// among the `limit` rows past `from`. Returns what it deleted and where the next batch
/// starts.
pub(super) async fn sweep(
    db: &impl GenericClient,
    now: UnixTime,
    from: &Sweep,
    limit: u32,
) -> Result<(Purged, Option<Sweep>), tokio_postgres::Error> {
    let table = Swept::of(from);
    let (end, deleted) = match SweepKey::after(from) {
        SweepKey::Token(after) => {
            let (end, deleted) =
                sweep_range::<Vec<u8>>(db, table, after.to_vec(), now, limit).await?;
            let end = end.map(|key| token_sweep_end(TokenHash::from_stored(key.as_slice())));
            (end.flatten(), deleted)
        }
        SweepKey::Grant(after) => {
            let (end, deleted) =
                sweep_range::<String>(db, table, after.to_owned(), now, limit).await?;
            (
                end.map(|id| Sweep::Grants(Some(GrantId::from_stored(id)))),
                deleted,
            )
        }
    };
    Ok((swept(from, deleted), next_sweep(from, end)))
}

/// [`sweep`] on a table whose key reads and binds as `K`: the key of the batch's last row
/// (`None` when it ran to the end of the table) and the rows it deleted.
async fn sweep_range<K>(
    db: &impl GenericClient,
    table: Swept,
    after: K,
    now: UnixTime,
    limit: u32,
) -> Result<(Option<K>, u64), tokio_postgres::Error>
where
    K: ToSql + Sync + for<'r> tokio_postgres::types::FromSql<'r>,
{
    let param = |n: usize| format!("${n}");
    let skip = i64::from(limit.saturating_sub(1));
    let end: Option<K> = db
        .query_opt(sweep_end_sql(table, param).as_str(), &[&after, &skip])
        .await?
        .map(|row| row.get(0));
    let deleted = match &end {
        Some(until) => {
            db.execute(
                sweep_delete_sql(table, true, true, param).as_str(),
                &[&after, &now, until],
            )
            .await?
        }
        None => {
            db.execute(
                sweep_delete_sql(table, false, true, param).as_str(),
                &[&after, &now],
            )
            .await?
        }
    };
    Ok((end, deleted))
}

/// Deletes at most `limit` audit records written before `before` (`purge_audit_sql`).
pub(super) async fn purge_audit(
    db: &impl GenericClient,
    before: UnixTime,
    limit: u32,
) -> Result<u64, tokio_postgres::Error> {
    let sql = purge_audit_sql(|n| format!("${n}"));
    let head = i64::from(limit) * i64::from(AUDIT_PURGE_HEAD);
    db.execute(sql.as_str(), &[&before, &i64::from(limit), &head])
        .await
}
