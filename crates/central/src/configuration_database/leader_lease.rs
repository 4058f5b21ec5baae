//! The leader lease in PostgreSQL, and the fence every singleton write
//! passes.
//!
//! One row, `leader_lease` `'central'`: `holder`, `epoch`, `expires_at_ms`.
//! Every time in it is the database's clock ([`DB_NOW_MS`]), never a node's,
//! so nodes whose clocks drift still agree on who holds it.
//! - acquire: `epoch + 1` and a fresh expiry, only where the lease has
//!   expired — so at most one node holds an unexpired lease;
//! - renew: a fresh expiry only `WHERE holder = me AND epoch = my_epoch` —
//!   a node that lost the lease (a higher epoch exists) can never renew it;
//! - release: expire it now and `NOTIFY sitelink_lease`, so a standby that
//!   listens takes over in about a second;
//! - fence: a singleton's write transaction first reads the row `FOR
//!   SHARE` and goes on only while `holder = me AND epoch = my_epoch AND
//!   expires_at_ms > now`: a takeover (an UPDATE of that row) waits for the
//!   transaction, and a stale leader's write is refused.
//!
//! Row share locks let an UPDATE starve: PostgreSQL grants a new `FOR
//! SHARE` while an older one is held, even with an UPDATE waiting, so a
//! busy node whose ingest commits overlap (two in flight, each holding the
//! share lock) never got its renewal through, and stepped down after 6 s
//! under a burst (`sitelink bench fleet`, 1,000 sites at 5,000 rows/s).
//! So every lease write and every fence also take the transaction-scoped
//! advisory lock [`LEASE_LOCK`], writes exclusively and fences shared:
//! the lock manager queues a new shared request behind a waiting
//! exclusive one, so a renewal waits for at most the commits already
//! running. The row lock stays what makes the fence hold.

use sqlx::Row;

/// The database's clock, in ms since the epoch.
pub const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The advisory lock (transaction-scoped) that orders lease writes before
/// fences that come after them: exclusive for acquire, renew and release,
/// shared for a fence. (`"sllease1"` as a number; any fixed key works.)
pub const LEASE_LOCK: i64 = 0x736c_6c65_6173_6531;

/// The channel a release is announced on.
pub const RELEASE_CHANNEL: &str = "sitelink_lease";

/// A node's claim: who, and which term.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Term {
    pub holder: String,
    pub epoch: i64,
}

/// The lease row as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    pub holder: Option<String>,
    pub epoch: i64,
    pub expires_at_ms: i64,
    /// The database's clock when read.
    pub now_ms: i64,
    /// When the holder acquired it.
    pub acquired_at_ms: i64,
    /// At the latest change of holder: from the old holder's last renewal
    /// (or release) to the acquisition.
    pub last_gap_ms: Option<i64>,
}

/// Takes the lease for `holder` for `ttl_ms` if it has expired; the new
/// term, or `None` while another node holds it.
pub async fn try_acquire(
    conn: &mut sqlx::AnyConnection,
    holder: &str,
    ttl_ms: i64,
) -> Result<Option<Term>, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    lease_write_lock(&mut tx).await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE leader_lease SET holder = $1, epoch = epoch + 1, expires_at_ms = {DB_NOW_MS} + $2,
             last_gap_ms = CASE WHEN holder IS NULL THEN NULL ELSE {DB_NOW_MS} - renewed_at_ms END,
             acquired_at_ms = {DB_NOW_MS}, renewed_at_ms = {DB_NOW_MS}
         WHERE name = 'central' AND expires_at_ms <= {DB_NOW_MS} RETURNING epoch"
    )))
    .bind(holder)
    .bind(ttl_ms)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row
        .map(|r| r.try_get::<i64, _>(0))
        .transpose()?
        .map(|epoch| Term {
            holder: holder.to_owned(),
            epoch,
        }))
}

/// Extends `term`'s lease by `ttl_ms` from now; false when the term is over
/// (another node acquired since).
pub async fn renew(
    conn: &mut sqlx::AnyConnection,
    term: &Term,
    ttl_ms: i64,
) -> Result<bool, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    lease_write_lock(&mut tx).await?;
    let done = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE leader_lease SET expires_at_ms = {DB_NOW_MS} + $3, renewed_at_ms = {DB_NOW_MS}
         WHERE name = 'central' AND holder = $1 AND epoch = $2"
    )))
    .bind(&term.holder)
    .bind(term.epoch)
    .bind(ttl_ms)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(done.rows_affected() == 1)
}

/// The exclusive [`LEASE_LOCK`], held until `tx` ends.
async fn lease_write_lock(tx: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(LEASE_LOCK)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Ends `term` now (a graceful stop) and tells the listening standby (the
/// NOTIFY is delivered when the release commits).
pub async fn release(conn: &mut sqlx::AnyConnection, term: &Term) -> Result<(), sqlx::Error> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    lease_write_lock(&mut tx).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE leader_lease SET expires_at_ms = {DB_NOW_MS}, renewed_at_ms = {DB_NOW_MS}
         WHERE name = 'central' AND holder = $1 AND epoch = $2"
    )))
    .bind(&term.holder)
    .bind(term.epoch)
    .execute(&mut *tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(RELEASE_CHANNEL)
        .bind(term.epoch.to_string())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// The lease row now.
pub async fn state(pool: &sqlx::AnyPool) -> Result<LeaseState, sqlx::Error> {
    let r = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT holder, epoch, expires_at_ms, {DB_NOW_MS}, acquired_at_ms, last_gap_ms
         FROM leader_lease WHERE name = 'central'"
    )))
    .fetch_one(pool)
    .await?;
    Ok(LeaseState {
        holder: r.try_get(0)?,
        epoch: r.try_get(1)?,
        expires_at_ms: r.try_get(2)?,
        now_ms: r.try_get(3)?,
        acquired_at_ms: r.try_get(4)?,
        last_gap_ms: r.try_get(5)?,
    })
}

/// Records how this node sees itself (`role`: active or standby), for the
/// cluster page; `since_ms` changes only with the role.
pub async fn report_node(
    pool: &sqlx::AnyPool,
    name: &str,
    http_address: &str,
    role: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO cluster_nodes (name, http_address, role, since_ms, seen_ms)
         VALUES ($1, $2, $3, {DB_NOW_MS}, {DB_NOW_MS})
         ON CONFLICT (name) DO UPDATE SET http_address = EXCLUDED.http_address,
             since_ms = CASE WHEN cluster_nodes.role = EXCLUDED.role THEN cluster_nodes.since_ms
                             ELSE EXCLUDED.since_ms END,
             role = EXCLUDED.role, seen_ms = EXCLUDED.seen_ms"
    )))
    .bind(name)
    .bind(http_address)
    .bind(role)
    .execute(pool)
    .await?;
    Ok(())
}

/// A node as it last reported itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRow {
    pub name: String,
    pub http_address: String,
    pub role: String,
    pub since_ms: i64,
    pub seen_ms: i64,
}

/// Every node that ever reported, by name.
pub async fn nodes(pool: &sqlx::AnyPool) -> Result<Vec<NodeRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT name, http_address, role, since_ms, seen_ms FROM cluster_nodes ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(NodeRow {
                name: r.try_get(0)?,
                http_address: r.try_get(1)?,
                role: r.try_get(2)?,
                since_ms: r.try_get(3)?,
                seen_ms: r.try_get(4)?,
            })
        })
        .collect()
}

/// Why a singleton's write was refused: this node's term is over.
#[derive(Debug, thiserror::Error)]
#[error("fenced: this node's leader term (epoch {epoch}) is over; another node is active")]
pub struct Fenced {
    pub epoch: i64,
}

/// The fence check at the start of a singleton's write transaction (see
/// the module's doc). Refused as an I/O error carrying [`Fenced`], which
/// [`is_fenced`] recognizes by type.
pub async fn check(conn: &mut sqlx::AnyConnection, term: &Term) -> Result<(), sqlx::Error> {
    // Behind any lease write already waiting (see the module's doc).
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
        .bind(LEASE_LOCK)
        .execute(&mut *conn)
        .await?;
    let held = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT epoch FROM leader_lease
         WHERE name = 'central' AND holder = $1 AND epoch = $2 AND expires_at_ms > {DB_NOW_MS}
         FOR SHARE"
    )))
    .bind(&term.holder)
    .bind(term.epoch)
    .fetch_optional(&mut *conn)
    .await?;
    match held {
        Some(_) => Ok(()),
        None => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            Fenced { epoch: term.epoch },
        ))),
    }
}

/// Whether `e` is a fence refusal (by type, not by text).
pub fn is_fenced(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(io) => io.get_ref().is_some_and(|inner| inner.is::<Fenced>()),
        _ => false,
    }
}
