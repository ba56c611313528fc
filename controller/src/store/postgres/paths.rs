//! The path mesh's fleet keys in PostgreSQL (`mesh_keys`).

use sqlx::Row as _;

use super::PgStore;
use crate::store::{MeshKeyRecord, PathStore, StoreError, StoreFuture};

async fn mesh_keys(s: &PgStore) -> Result<Vec<MeshKeyRecord>, StoreError> {
    let rows = sqlx::query("SELECT id, secret, created_ms, active_ms FROM mesh_keys ORDER BY created_ms, id")
        .fetch_all(&s.pool)
        .await?;
    rows.iter()
        .map(|r| {
            let id: i64 = r.try_get("id")?;
            Ok(MeshKeyRecord {
                // Written by add_mesh_key from a u8; anything else is not a key.
                id: u8::try_from(id).map_err(|_| StoreError::UnknownValue {
                    what: "mesh key id",
                    value: id.to_string(),
                })?,
                secret: r.try_get("secret")?,
                created_ms: r.try_get("created_ms")?,
                active_ms: r.try_get("active_ms")?,
            })
        })
        .collect()
}

async fn add_mesh_key(s: &PgStore, key: &MeshKeyRecord, keep: usize) -> Result<(), StoreError> {
    let mut tx = s.pool.begin().await?;
    sqlx::query(
        "INSERT INTO mesh_keys (id, secret, created_ms, active_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET secret = excluded.secret, created_ms = excluded.created_ms, \
         active_ms = excluded.active_ms",
    )
    .bind(i64::from(key.id))
    .bind(&key.secret)
    .bind(key.created_ms)
    .bind(key.active_ms)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM mesh_keys WHERE id NOT IN \
         (SELECT id FROM mesh_keys ORDER BY created_ms DESC, id DESC LIMIT $1)",
    )
    .bind(i64::try_from(keep.max(1)).unwrap_or(i64::MAX))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

impl PathStore for PgStore {
    fn mesh_keys(&self) -> StoreFuture<'_, Vec<MeshKeyRecord>> {
        Box::pin(mesh_keys(self))
    }

    fn add_mesh_key<'a>(&'a self, key: &'a MeshKeyRecord, keep: usize) -> StoreFuture<'a, ()> {
        Box::pin(add_mesh_key(self, key, keep))
    }
}
