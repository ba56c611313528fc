//! The console's ended sessions ([`LogoutStore`]).

use super::PgStore;
use crate::store::{LogoutStore, StoreError, StoreFuture};

async fn record_logout(s: &PgStore, id: &str, expires_ms: i64, now_ms: i64) -> Result<(), StoreError> {
    let mut tx = s.pool.begin().await?;
    sqlx::query("DELETE FROM console_logouts WHERE expires_ms <= $1")
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO console_logouts (session, expires_ms) VALUES ($1, $2) ON CONFLICT (session) DO NOTHING")
        .bind(id)
        .bind(expires_ms)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn logged_out(s: &PgStore, id: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM console_logouts WHERE session = $1")
        .bind(id)
        .fetch_optional(&s.pool)
        .await?;
    Ok(row.is_some())
}

impl LogoutStore for PgStore {
    fn record_logout<'a>(&'a self, id: &'a str, expires_ms: i64, now_ms: i64) -> StoreFuture<'a, ()> {
        Box::pin(record_logout(self, id, expires_ms, now_ms))
    }

    fn logged_out<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(logged_out(self, id))
    }
}
