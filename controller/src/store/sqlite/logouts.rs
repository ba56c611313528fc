//! The console's ended sessions ([`LogoutStore`]).

use super::SqliteStore;
use crate::store::{LogoutStore, StoreError, StoreFuture};

async fn record_logout(s: &SqliteStore, id: &str, expires_ms: i64, now_ms: i64) -> Result<(), StoreError> {
    let mut tx = s.write.begin().await?;
    sqlx::query("DELETE FROM console_logouts WHERE expires_ms <= ?")
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO console_logouts (session, expires_ms) VALUES (?, ?) ON CONFLICT (session) DO NOTHING")
        .bind(id)
        .bind(expires_ms)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

async fn logged_out(s: &SqliteStore, id: &str) -> Result<bool, StoreError> {
    let row = sqlx::query("SELECT 1 FROM console_logouts WHERE session = ?")
        .bind(id)
        .fetch_optional(&s.read)
        .await?;
    Ok(row.is_some())
}

impl LogoutStore for SqliteStore {
    fn record_logout<'a>(&'a self, id: &'a str, expires_ms: i64, now_ms: i64) -> StoreFuture<'a, ()> {
        Box::pin(record_logout(self, id, expires_ms, now_ms))
    }

    fn logged_out<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(logged_out(self, id))
    }
}
