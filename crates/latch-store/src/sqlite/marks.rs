//! Revocation marks of single tokens and of grants: an append-only log in the database,
//! indexed in memory.
//!
//! Revoking one access token used to `UPDATE` its row, a random leaf of the largest table, and
//! each such leaf is a page of its own in the commit's WAL write, its `fsync` and the next
//! checkpoint (docs/benchmarks.md, round of 2026-12-02). A mark is now a row appended to
//! `revocation_log` (rowid order, no index by token), so the revocations of one commit share
//! its pages, and "is this token revoked?" is answered from [`RevocationMarks`], an index of
//! the log kept in memory.
//!
//! A revoked grant is marked in its own row, which refresh tokens are read with; its access
//! tokens, read without it (schema version 6), learn of it from a log row for the grant
//! (schema version 7), indexed by grant id beside the tokens' marks ([`MarkOf`]). Everything
//! below holds for both kinds of mark; a grant's lasts until the grant expires.
//!
//! The log is the truth; the index only follows it, and only from committed rows:
//! - every read of tokens first catches up with the log ([`RevocationMarks::catch_up`]: the
//!   rows past the last one seen, usually none), so a revocation committed by this process or
//!   any other on the file before the read began is seen;
//! - the writer catches up when it opens a batch, before the batch writes anything
//!   ([`RevocationMarks::begin_batch`]); the marks its own batch adds are kept apart until
//!   they commit ([`RevocationMarks::mark_in_write`] sees both), recorded only once the
//!   revocation's whole write has succeeded, and dropped when the next batch (or the replay
//!   of a failed one) begins;
//! - once the batch has committed, and before any of its writers is answered, the writer
//!   puts its own marks in the index itself ([`RevocationMarks::batch_committed`]), so that
//!   no read has to load from SQL the rows the writer has just appended (callgrind: 6.4% of
//!   a revocation's instructions went into those catch-ups). It may do so only when its rows
//!   are the whole of the log past the batch's catch-up: the write lock keeps any other
//!   connection from appending meanwhile, and a new row's `seq` is one past the largest, so
//!   they are `base + 1 ..= base + n` — which it checks, leaving them to the next catch-up
//!   otherwise;
//! - a mark leaves the index only once its token has expired, when it no longer matters,
//!   and the clocks' allowance ([`EXPIRY_GRACE`]) has passed, as for the rows themselves:
//!   at an expiry clean-up (at most once a minute, as it walks the whole index with every
//!   read waiting), once the clean-up has deleted those tokens' rows, so that they read as
//!   unknown. A full index forgets nothing itself ([`RevocationMarks::has_room`]): a server
//!   whose own clean-up is off (the purge left to `latch gc`) marks the rows of its
//!   revocations once its index is full, until it restarts. At start-up the log's expired
//!   rows are not loaded ([`RevocationMarks::load`]).
//!
//! So the index holds one entry per revoked, unexpired token or grant revoked this way. To
//! keep that bounded whatever clients do, past [`MAX_MARKS`] a revocation marks the token's
//! row instead, as before (`tokens.revoked_at`, which every read also honours), or, for a
//! grant, the rows of its access tokens.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use latch_core::cleanup::EXPIRY_GRACE;
use latch_core::clock::{Clock, SystemClock, UnixTime};
use latch_core::grant::TokenRecord;
use latch_core::id::GrantId;
use latch_core::token::TokenHash;
use rusqlite::{Connection, OptionalExtension};

use super::committer::BatchObserver;

/// The most marks the index holds; past it, revocations write the token's row.
///
/// Measured, not estimated: a mark is 64 bytes in a hash table that keeps a power-of-two
/// number of slots at most 7/8 full. One table of 2M marks held 268 MB (401 MB while it grew);
/// [`SHARDS`] tables of up to 1.5M marks in all hold 135 MB, and grow one shard at a time
/// (139 MB at most). That keeps a full index, with the rest of the server, under the 250 MB
/// the server is meant to stay within.
pub(super) const MAX_MARKS: usize = 1_500_000;

/// The index is split by one byte of each token's SHA-256 into this many tables, so that no
/// one growth doubles the whole index at once.
const SHARDS: usize = 16;

/// How many log rows a catch-up reads before putting them in the index, so that loading a
/// long log at start-up holds no second copy of it.
const LOAD_CHUNK: usize = 4096;

/// Seconds between two walks of the index that forget expired marks: each holds the index,
/// which every read takes, for up to about 20 ms (1.5M marks), and a clean-up asks once per
/// batch of 1,000 rows it deletes.
const FORGET_INTERVAL: i64 = 60;

/// A token's key in the index's tables, hashed by 8 bytes of its SHA-256.
///
/// The keys are digests: already uniform, and no one can choose a token string whose digest
/// collides with another's, so SipHash (the standard tables' defence against chosen keys)
/// bought nothing for its ~330 instructions over 40 bytes, several times per revocation.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key(TokenHash);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // A key ends with its 32-byte SHA-256 (after the locator, if any). Not its last 8
        // bytes: the last byte picks the shard ([`shard_of`]), so within a shard it is
        // partly the same for every key.
        let bytes = self.0.as_bytes();
        let word = bytes
            .len()
            .checked_sub(16)
            .and_then(|start| bytes.get(start..start + 8))
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes);
        state.write_u64(word);
    }
}

/// The hasher of [`Key`]: the word it writes is the hash.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `Key`; kept correct for any other input (FNV-1a).
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A table keyed by token.
type ByToken<V> = HashMap<Key, V, BuildHasherDefault<KeyHasher>>;

/// A table keyed by grant: std's hasher, as a grant id is not a digest.
type ByGrant<V> = HashMap<GrantId, V>;

/// What a row of the revocation log revokes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum MarkOf {
    /// One token, by its key in `tokens`.
    Token(TokenHash),
    /// A grant, for its access tokens that are read without it (schema version 6 on): the
    /// grant's own row is marked in the same write, and read with every other token.
    Grant(GrantId),
}

/// A revoked token's or grant's mark.
#[derive(Clone, Copy, Debug)]
struct Mark {
    revoked_at: UnixTime,
    expires_at: UnixTime,
}

/// Where the writer's open batch put a revocation of one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Marked {
    /// In the revocation log, as row `seq`; the token expires at `expires_at`.
    Logged { seq: i64, expires_at: UnixTime },
    /// In the token's own row (the index was full).
    InRow,
}

/// The writer's open batch: what it has revoked, and where the log stood when it began.
#[derive(Default)]
struct Batch {
    /// The log's last row when the batch began (after its catch-up): the batch's own rows
    /// come after it.
    base: i64,
    marks: ByToken<(UnixTime, Marked)>,
    grants: ByGrant<(UnixTime, Marked)>,
}

impl Batch {
    fn len(&self) -> usize {
        self.marks.len() + self.grants.len()
    }
}

struct Index {
    /// The last log row loaded; every committed row up to it is in `shards` (or has expired).
    through: i64,
    shards: [ByToken<Mark>; SHARDS],
    /// The marks of revoked grants (far fewer than of tokens: one per grant, however many
    /// access tokens it holds).
    grants: ByGrant<Mark>,
    /// When expired marks may next be forgotten ([`FORGET_INTERVAL`]).
    next_forget: UnixTime,
}

impl Index {
    /// When the token `hash` was revoked, if the index marks it.
    fn revoked_at(&self, hash: &TokenHash) -> Option<UnixTime> {
        self.shards[shard_of(hash)]
            .get(&Key(*hash))
            .map(|m| m.revoked_at)
    }

    /// When the grant `id` was revoked, if the index marks it.
    fn grant_revoked_at(&self, id: &GrantId) -> Option<UnixTime> {
        self.grants.get(id).map(|m| m.revoked_at)
    }

    fn insert(&mut self, loaded: impl IntoIterator<Item = (MarkOf, Mark)>) {
        for (of, mark) in loaded {
            match of {
                MarkOf::Token(hash) => {
                    self.shards[shard_of(&hash)]
                        .entry(Key(hash))
                        .or_insert(mark);
                }
                MarkOf::Grant(id) => {
                    self.grants.entry(id).or_insert(mark);
                }
            }
        }
    }

    fn len(&self) -> usize {
        self.shards.iter().map(ByToken::len).sum::<usize>() + self.grants.len()
    }

    /// Drops the marks of tokens expired at `now`, unless that was done less than
    /// [`FORGET_INTERVAL`] ago (by a clock that has not stepped back since: one corrected
    /// after running ahead would otherwise forget nothing for as long as it ran ahead).
    fn forget_expired(&mut self, now: UnixTime) {
        let stepped_back = now < self.next_forget.saturating_sub(FORGET_INTERVAL);
        if now < self.next_forget && !stepped_back {
            return;
        }
        self.next_forget = now.saturating_add(FORGET_INTERVAL);
        for shard in &mut self.shards {
            shard.retain(|_, m| m.expires_at > now);
        }
        self.grants.retain(|_, m| m.expires_at > now);
    }
}

/// A token's shard: from the last byte of its key, which is always a byte of its SHA-256
/// (the locator, when there is one, comes first and is not random).
fn shard_of(hash: &TokenHash) -> usize {
    hash.as_bytes()
        .last()
        .map_or(0, |b| usize::from(*b) % SHARDS)
}

/// The in-memory index of `revocation_log` (see the module documentation).
pub(super) struct RevocationMarks {
    index: Mutex<Index>,
    /// The marks the writer's open batch has added (the writer thread's alone).
    batch: Mutex<Batch>,
    capacity: usize,
}

impl RevocationMarks {
    /// An empty index holding at most `capacity` marks; the first catch-up loads the log.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            index: Mutex::new(Index {
                through: 0,
                shards: std::array::from_fn(|_| ByToken::default()),
                grants: ByGrant::default(),
                next_forget: UnixTime::MIN,
            }),
            batch: Mutex::new(Batch::default()),
            capacity,
        }
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn batch(&self) -> MutexGuard<'_, Batch> {
        self.batch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Loads the log rows committed since the last catch-up, as `conn` sees the log. Outside a
    /// write transaction, or in one before it has written, that is committed rows only.
    pub(super) fn catch_up(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.load_log(conn, UnixTime::MIN)
    }

    /// The first catch-up, at start-up: the whole log, except the marks of tokens that had
    /// expired [`EXPIRY_GRACE`] before the log's newest revocation was made, or before now if
    /// that is earlier (a revocation made while the clock ran ahead must not take with it the
    /// marks of tokens the corrected clock still finds unexpired).
    /// Rows stay in the log until a clean-up purges them, and none may run (`latch gc` left
    /// undone), so the log can be far longer than the index may be; its unexpired marks are
    /// not, each having found room in the index when it was written.
    pub(super) fn load(&self, conn: &Connection) -> rusqlite::Result<()> {
        let newest = conn
            .query_row(
                "SELECT revoked_at FROM revocation_log ORDER BY seq DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        let expired_at = newest.map_or(UnixTime::MIN, |at: UnixTime| {
            at.min(SystemClock.now()).saturating_sub(EXPIRY_GRACE)
        });
        self.load_log(conn, expired_at)
    }

    /// Loads the log rows past the last one loaded, leaving out the marks of tokens expired
    /// at `expired_at`.
    fn load_log(&self, conn: &Connection, expired_at: UnixTime) -> rusqlite::Result<()> {
        let from = self.index().through;
        let mut stmt = conn.prepare_cached(
            "SELECT seq, hash, revoked_at, expires_at, grant_id FROM revocation_log \
             WHERE seq > ?1 ORDER BY seq",
        )?;
        let mut rows = stmt.query([from])?;
        let mut loaded = Vec::new();
        let mut last = from;
        // Another catch-up may run meanwhile; marks are facts (each row is committed), so
        // loading one twice, or before `through` covers it, is harmless, and `through` only
        // moves forward, each catch-up having loaded every row up to its own end.
        while let Some(row) = rows.next()? {
            last = row.get(0)?;
            let of = match row.get::<_, Option<String>>(4)? {
                Some(grant) => Some(MarkOf::Grant(GrantId::from_stored(grant))),
                None => TokenHash::from_stored(row.get_ref(1)?.as_blob()?).map(MarkOf::Token),
            };
            if let Some(of) = of {
                let mark = Mark {
                    revoked_at: row.get(2)?,
                    expires_at: row.get(3)?,
                };
                if mark.expires_at <= expired_at {
                    continue;
                }
                loaded.push((of, mark));
                if loaded.len() == LOAD_CHUNK {
                    self.index().insert(loaded.drain(..));
                }
            }
        }
        if last == from {
            return Ok(());
        }
        let mut index = self.index();
        index.insert(loaded);
        index.through = index.through.max(last);
        Ok(())
    }

    /// The writer's start of a batch, in its transaction before any write: catches up with
    /// the log (the previous batch's marks, committed, are in it now) and forgets the marks
    /// of the previous batch, or of this batch's first run if it is being replayed.
    pub(super) fn begin_batch(&self, conn: &Connection) -> rusqlite::Result<()> {
        {
            let mut batch = self.batch();
            batch.marks.clear();
            batch.grants.clear();
        }
        self.catch_up(conn)?;
        // Caught up in a write transaction: `through` is now the log's last row.
        let base = self.index().through;
        self.batch().base = base;
        Ok(())
    }

    /// Records that the open batch has revoked `of` at `revoked_at`, marked as `marked`. Call
    /// it only once the revocation's write can no longer fail, so that a write rolled back
    /// alone (in its savepoint) leaves no mark here.
    pub(super) fn marked_in_batch(&self, of: MarkOf, revoked_at: UnixTime, marked: Marked) {
        let mut batch = self.batch();
        match of {
            MarkOf::Token(hash) => {
                batch.marks.insert(Key(hash), (revoked_at, marked));
            }
            MarkOf::Grant(id) => {
                batch.grants.insert(id, (revoked_at, marked));
            }
        }
    }

    /// The writer's end of a batch that has committed, before its writers are answered: the
    /// batch's log rows go into the index, and `through` past them, if they are exactly the
    /// rows after the batch's base (see the module documentation); otherwise the next
    /// catch-up loads them from the log, as it would any other process's.
    pub(super) fn batch_committed(&self) {
        fn logged(
            (of, (revoked_at, marked)): (MarkOf, (UnixTime, Marked)),
        ) -> Option<(i64, MarkOf, Mark)> {
            match marked {
                Marked::Logged { seq, expires_at } => Some((
                    seq,
                    of,
                    Mark {
                        revoked_at,
                        expires_at,
                    },
                )),
                Marked::InRow => None,
            }
        }
        let (base, mut logged) = {
            let mut batch = self.batch();
            let Batch {
                base,
                marks,
                grants,
            } = &mut *batch;
            let tokens = marks.drain().map(|(Key(hash), m)| (MarkOf::Token(hash), m));
            let grants = grants.drain().map(|(id, m)| (MarkOf::Grant(id), m));
            let logged: Vec<(i64, MarkOf, Mark)> =
                tokens.chain(grants).filter_map(logged).collect();
            (*base, logged)
        };
        logged.sort_unstable_by_key(|(seq, ..)| *seq);
        let Some(&(last, ..)) = logged.last() else {
            return;
        };
        let right_after_base = logged
            .iter()
            .zip(base + 1..)
            .all(|((seq, ..), expected)| *seq == expected);
        if !right_after_base {
            return;
        }
        let mut index = self.index();
        // Every row up to `base` is in already (`through` only moves forward, and was `base`
        // when the batch began), and the rows after it up to `last` are these.
        index.insert(logged.into_iter().map(|(_, of, mark)| (of, mark)));
        index.through = index.through.max(last);
    }

    /// Sets a token's revocation time, and its grant's, from their marks, if the index has
    /// them (reads, after a catch-up).
    pub(super) fn apply(&self, record: &mut TokenRecord) {
        let index = self.index();
        if record.revoked_at.is_none() {
            record.revoked_at = index.revoked_at(&record.hash);
        }
        if record.grant_revoked_at.is_none() {
            record.grant_revoked_at = index.grant_revoked_at(&record.grant_id);
        }
    }

    /// The mark of `hash`, in a write: in the index (caught up when the batch began) or
    /// added by the batch itself.
    pub(super) fn mark_in_write(&self, hash: &TokenHash) -> Option<UnixTime> {
        let committed = self.index().revoked_at(hash);
        committed.or_else(|| self.batch().marks.get(&Key(*hash)).map(|(at, _)| *at))
    }

    /// The mark of the grant `id`, in a write, as [`mark_in_write`](Self::mark_in_write).
    pub(super) fn grant_mark_in_write(&self, id: &GrantId) -> Option<UnixTime> {
        let committed = self.index().grant_revoked_at(id);
        committed.or_else(|| self.batch().grants.get(id).map(|(at, _)| *at))
    }

    /// [`apply`](Self::apply), in a write ([`mark_in_write`](Self::mark_in_write)).
    pub(super) fn apply_in_write(&self, record: &mut TokenRecord) {
        if record.revoked_at.is_none() {
            record.revoked_at = self.mark_in_write(&record.hash);
        }
        if record.grant_revoked_at.is_none() {
            record.grant_revoked_at = self.grant_mark_in_write(&record.grant_id);
        }
    }

    /// Whether a new mark may go in the log (or must go in the token's row), given `pending`
    /// marks the write has made and not yet handed to the batch. A full index forgets nothing
    /// itself: only the clean-up does, once it has deleted the rows of the tokens it forgets
    /// ([`RevocationMarks::forget_expired`]), which then read as unknown. Forgotten by a
    /// clock that ran ahead with their rows kept, tokens still unexpired would read as live
    /// once it was corrected; and no start-time reading of the clock makes that safe (it may
    /// have run ahead since before the start). A node whose clean-up is off marks the rows
    /// of its revocations once the index is full.
    pub(super) fn has_room(&self, pending: usize) -> bool {
        let batch = self.batch().len() + pending;
        self.index().len() + batch < self.capacity
    }

    /// Drops the marks of tokens expired at `now` ([`FORGET_INTERVAL`]).
    pub(super) fn forget_expired(&self, now: UnixTime) {
        self.index().forget_expired(now);
    }

    /// How many marks the index holds.
    pub(super) fn len(&self) -> usize {
        self.index().len()
    }

    /// The index's mark of `hash`, as a read sees it without catching up first.
    #[cfg(test)]
    pub(super) fn indexed(&self, hash: &TokenHash) -> Option<UnixTime> {
        self.index().revoked_at(hash)
    }

    /// The index's mark of the grant `id`, as a read sees it without catching up first.
    #[cfg(test)]
    pub(super) fn indexed_grant(&self, id: &GrantId) -> Option<UnixTime> {
        self.index().grant_revoked_at(id)
    }

    /// The last log row the index accounts for.
    #[cfg(test)]
    pub(super) fn through(&self) -> i64 {
        self.index().through
    }
}

/// The writer's batches, as the marks follow them.
impl BatchObserver for RevocationMarks {
    fn begin(&self, conn: &Connection) -> rusqlite::Result<()> {
        self.begin_batch(conn)
    }

    fn committed(&self) {
        self.batch_committed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latch_core::token::{TokenKind, TokenSecret};

    #[test]
    fn a_log_longer_than_a_load_chunk_is_loaded_whole_and_spread_over_the_shards() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        let count = 2 * LOAD_CHUNK + 17;
        let hashes: Vec<TokenHash> = (0..count)
            .map(|at| append(&conn, at as i64, 1000))
            .collect();

        let marks = RevocationMarks::new(MAX_MARKS);
        marks.catch_up(&conn).unwrap();
        assert_eq!(marks.len(), count);
        for (at, hash) in hashes.iter().enumerate() {
            assert_eq!(marks.mark_in_write(hash), Some(at as i64));
        }
        assert_eq!(marks.index().through, count as i64);
        let index = marks.index();
        assert!(
            index.shards.iter().all(|s| s.len() > count / SHARDS / 2),
            "uneven shards: {:?}",
            index.shards.iter().map(ByToken::len).collect::<Vec<_>>()
        );
        drop(index);

        marks.forget_expired(1000);
        assert_eq!(marks.len(), 0, "every mark expired at 1,000");
    }

    #[test]
    fn keys_hash_by_their_digest_and_spread_within_one_shard() {
        use std::collections::HashSet;
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<KeyHasher>::default();
        let minted = (0..8192).map(|_| TokenSecret::mint(TokenKind::Access).hash());
        let digests_alone = (0..8192).map(|i| TokenHash::of(&format!("not a token {i}")));
        for keys in [minted.collect::<Vec<_>>(), digests_alone.collect()] {
            let in_shard: Vec<&TokenHash> = keys.iter().filter(|k| shard_of(k) == 3).collect();
            let hashes: HashSet<u64> = in_shard.iter().map(|k| build.hash_one(Key(**k))).collect();
            assert_eq!(
                hashes.len(),
                in_shard.len(),
                "no two keys of a shard collide"
            );
            // The table's 7-bit tags (the hash's top bits) must vary within a shard, whose
            // keys share bits of their last byte.
            let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
            assert!(tags.len() > 100, "{} tags of 128 in use", tags.len());
        }
    }

    #[test]
    fn expired_marks_are_forgotten_at_most_once_a_minute() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        let marks = RevocationMarks::new(MAX_MARKS);
        log_mark(&conn, &marks, 1000);
        log_mark(&conn, &marks, 1010);
        marks.forget_expired(1000);
        assert_eq!(marks.len(), 1);
        // The clean-up's next batch, seconds later: no second walk of the index yet.
        marks.forget_expired(1010);
        assert_eq!(marks.len(), 1);
        marks.forget_expired(1000 + FORGET_INTERVAL);
        assert_eq!(marks.len(), 0);
    }

    #[test]
    fn a_grants_mark_is_loaded_applied_to_its_tokens_reads_and_forgotten_once_it_expires() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        let token = append(&conn, 100, 2000);
        conn.execute(
            "INSERT INTO revocation_log (hash, revoked_at, expires_at, grant_id) \
             VALUES (x'', 200, 1000, 'g')",
            [],
        )
        .unwrap();

        let marks = RevocationMarks::new(MAX_MARKS);
        marks.load(&conn).unwrap();
        assert_eq!(marks.len(), 2);
        let grant = GrantId::from_stored("g".to_owned());
        assert_eq!(marks.grant_mark_in_write(&grant), Some(200));
        assert_eq!(
            marks.mark_in_write(&token),
            Some(100),
            "a token's mark beside it"
        );
        // A token of grant g and one of grant h, live in their own rows, read as a token
        // read finds them (carrying their owner, so without their grants).
        let stored = |name: &str, grant: &str| {
            let hash = TokenHash::of(name);
            conn.execute(
                "INSERT INTO tokens (hash, grant_id, kind, scope, issued_at, expires_at, \
                   tenant_id, client_id, subject) \
                 VALUES (?1, ?2, 0, 'read', 0, 900, 'default', 'app', 'alice')",
                (hash.as_bytes(), grant),
            )
            .unwrap();
            super::super::tokens::select_token(&conn, &hash)
                .unwrap()
                .unwrap()
        };
        let (mut read, mut of_another) = (stored("of g", "g"), stored("of h", "h"));
        assert_eq!(read.grant_revoked_at, None, "nothing in the row says so");
        marks.apply(&mut read);
        marks.apply(&mut of_another);
        assert_eq!((read.revoked_at, read.grant_revoked_at), (None, Some(200)));
        assert_eq!(of_another.grant_revoked_at, None);

        // The grant expires at 1,000 (and every token of it by then); the token at 2,000.
        marks.forget_expired(1000);
        assert_eq!(marks.len(), 1);
        assert_eq!(marks.grant_mark_in_write(&grant), None);
        assert_eq!(marks.mark_in_write(&token), Some(100));
    }

    /// Appends a mark for a new token, revoked at `revoked_at` and expiring at `expires_at`.
    fn append(conn: &Connection, revoked_at: i64, expires_at: i64) -> TokenHash {
        let hash = TokenSecret::mint(TokenKind::Access).hash();
        conn.execute(
            "INSERT INTO revocation_log (hash, revoked_at, expires_at) VALUES (?1, ?2, ?3)",
            (hash.as_bytes(), revoked_at, expires_at),
        )
        .unwrap();
        hash
    }

    /// Appends a mark for a new token expiring at `expires_at`, and loads it.
    fn log_mark(conn: &Connection, marks: &RevocationMarks, expires_at: i64) {
        append(conn, 0, expires_at);
        marks.catch_up(conn).unwrap();
    }

    #[test]
    fn the_start_up_load_leaves_out_tokens_expired_by_the_newest_revocation() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        let expired = append(&conn, 0, 600 - EXPIRY_GRACE);
        let within_allowance = append(&conn, 0, 500);
        let live = append(&conn, 100, 5000);
        let newest = append(&conn, 600, 700);

        let marks = RevocationMarks::new(MAX_MARKS);
        marks.load(&conn).unwrap();
        assert_eq!(
            marks.mark_in_write(&expired),
            None,
            "expired the clocks' allowance before 600"
        );
        assert_eq!(
            marks.mark_in_write(&within_allowance),
            Some(0),
            "expired at 500, but a clock stepped back from 600 could take it as live"
        );
        assert_eq!(marks.mark_in_write(&live), Some(100));
        assert_eq!(marks.mark_in_write(&newest), Some(600));
        assert_eq!(marks.len(), 3);

        // Later catch-ups load every new row, and only those.
        let later = append(&conn, 650, 660);
        marks.catch_up(&conn).unwrap();
        assert_eq!(marks.mark_in_write(&later), Some(650));
        assert_eq!(marks.len(), 4);
        assert_eq!(marks.index().through, 5);
    }

    /// A full index forgets nothing itself, however expired its marks look by the clock: a
    /// clock that ran ahead, once corrected, would find unexpired the tokens whose marks it
    /// forgot, and their rows do not say they are revoked. The clean-up makes room.
    #[test]
    fn a_full_index_forgets_nothing_itself() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        let marks = RevocationMarks::new(2);
        log_mark(&conn, &marks, 1_000);
        assert!(marks.has_room(0));
        log_mark(&conn, &marks, 1_200);
        assert!(!marks.has_room(0), "full");
        assert_eq!(marks.len(), 2);
        marks.forget_expired(1_100);
        assert!(marks.has_room(0), "the clean-up made room");
        assert_eq!(marks.len(), 1);
    }

    /// A clock corrected after running ahead forgets again at once, instead of waiting out
    /// the time it ran ahead by.
    #[test]
    fn a_clock_stepped_back_forgets_again_without_waiting() {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrate(&mut conn, super::super::Migrations::Apply).unwrap();
        let marks = RevocationMarks::new(MAX_MARKS);
        log_mark(&conn, &marks, 1_000);
        marks.forget_expired(10_000 + 3_600);
        assert_eq!(marks.len(), 0);
        log_mark(&conn, &marks, 2_000);
        marks.forget_expired(10_000);
        assert_eq!(marks.len(), 0);
    }
}
