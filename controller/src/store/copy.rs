//! Moving from SQLite to PostgreSQL: `graydar-controller copy-to-postgres`
//! copies every row of the SQLite database in a data directory into an
//! empty PostgreSQL database, in one PostgreSQL transaction, and checks the
//! row counts.
//!
//! The two schemas are the same migrations, one for one (same tables, same
//! columns, same names): the copy is generic, table by table, each value read
//! from SQLite as the type its PostgreSQL column has (SQLite keeps booleans
//! as integers). A table or a column that one side has and the other lacks
//! stops the copy before anything is written. Both databases are migrated to
//! this binary's version first.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use sqlx::postgres::Postgres;
use sqlx::{AssertSqlSafe, QueryBuilder, Row as _};

use super::{DatabaseUrl, PgStore, SqliteStore, StoreError};

/// Tables others refer to (foreign keys), copied first.
const PARENTS: &[&str] = &["agents", "faults"];
/// Rows per INSERT (PostgreSQL takes at most 65535 parameters).
const BATCH: usize = 1000;

/// What a copy did: rows per table.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub rows: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

impl From<sqlx::Error> for CopyError {
    fn from(e: sqlx::Error) -> CopyError {
        CopyError::Store(StoreError::Db(e))
    }
}

/// A column's PostgreSQL type, as the copy reads and binds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Int,
    Bool,
    Float,
    Text,
    Bytes,
}

/// `name` as an identifier in SQL text: the copy builds its statements
/// from the catalogs' table and column names, which graydar's migrations
/// make of lowercase letters, digits and `_` only; any other is refused.
fn ident(name: &str) -> Result<&str, CopyError> {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(name)
    } else {
        Err(CopyError::Refused(format!(
            "{name:?} is not an identifier of graydar's schema"
        )))
    }
}

fn kind_of(table: &str, column: &str, pg_type: &str) -> Result<Kind, CopyError> {
    Ok(match pg_type {
        "bigint" | "integer" | "smallint" => Kind::Int,
        "boolean" => Kind::Bool,
        "double precision" | "real" => Kind::Float,
        "text" | "character varying" => Kind::Text,
        "bytea" => Kind::Bytes,
        other => {
            return Err(CopyError::Refused(format!(
                "{table}.{column}: PostgreSQL type {other} is not one the copy knows"
            )));
        }
    })
}

/// Copies the SQLite database of `data_dir` into the PostgreSQL database at
/// `url`, which must have no rows yet (a new database: the migrations are
/// run on it first). Stop the controller that uses `data_dir` before.
pub async fn copy_sqlite_to_postgres(data_dir: &Path, url: &DatabaseUrl) -> Result<CopyReport, CopyError> {
    let file = data_dir.join("graydar.db");
    if !file.is_file() {
        return Err(CopyError::Refused(format!(
            "{}: no SQLite database there (--from-data-dir is the controller's data_dir)",
            file.display()
        )));
    }
    let from = SqliteStore::open(data_dir).await?;
    let to = PgStore::connect(url).await?;
    let src = &from.read;
    let dst = &to.pool;

    // The tables and their columns, both sides.
    let sqlite_tables: BTreeSet<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(src)
    .await?
    .into_iter()
    .collect();
    let pg_columns: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name NOT LIKE '\\_sqlx%' ORDER BY table_name, ordinal_position",
    )
    .fetch_all(dst)
    .await?;
    let mut schema: BTreeMap<String, Vec<(String, Kind)>> = BTreeMap::new();
    for (t, c, ty) in pg_columns {
        ident(&t)?;
        ident(&c)?;
        let k = kind_of(&t, &c, &ty)?;
        schema.entry(t).or_default().push((c, k));
    }
    let pg_tables: BTreeSet<String> = schema.keys().cloned().collect();
    if sqlite_tables != pg_tables {
        return Err(CopyError::Refused(format!(
            "the databases' tables differ: SQLite has {sqlite_tables:?}, PostgreSQL {pg_tables:?} \
             (both are migrated by this binary: is one of them another product's?)"
        )));
    }
    for (t, cols) in &schema {
        let sqlite_cols: BTreeSet<String> = sqlx::query(AssertSqlSafe(format!("PRAGMA table_info({})", ident(t)?)))
            .fetch_all(src)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("name"))
            .collect::<Result<_, _>>()?;
        let pg_cols: BTreeSet<String> = cols.iter().map(|(c, _)| c.clone()).collect();
        if sqlite_cols != pg_cols {
            return Err(CopyError::Refused(format!(
                "table {t}: SQLite has columns {sqlite_cols:?}, PostgreSQL {pg_cols:?}"
            )));
        }
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {}", ident(t)?)))
            .fetch_one(dst)
            .await?;
        if n > 0 {
            return Err(CopyError::Refused(format!(
                "the PostgreSQL database is not empty (table {t} has {n} rows): copy into a new database"
            )));
        }
    }

    let mut order: Vec<&String> = PARENTS
        .iter()
        .filter_map(|p| schema.keys().find(|t| t.as_str() == *p))
        .collect();
    order.extend(schema.keys().filter(|t| !PARENTS.contains(&t.as_str())));
    let mut tx = dst.begin().await?;
    let mut report = CopyReport::default();
    for t in order {
        let cols = &schema[t];
        let names: Vec<&str> = cols.iter().map(|(c, _)| c.as_str()).collect();
        let rows = sqlx::query(AssertSqlSafe(format!("SELECT {} FROM {}", names.join(", "), ident(t)?)))
            .fetch_all(src)
            .await?;
        for chunk in rows.chunks(BATCH) {
            let mut q = QueryBuilder::<Postgres>::new(format!("INSERT INTO {t} ({}) ", names.join(", ")));
            let mut bad = None;
            q.push_values(chunk, |mut b, row| {
                for (i, (c, k)) in cols.iter().enumerate() {
                    let bound = match k {
                        Kind::Int => row.try_get::<Option<i64>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                        Kind::Bool => row.try_get::<Option<i64>, _>(i).map(|v| {
                            b.push_bind(v.map(|x| x != 0));
                        }),
                        Kind::Float => row.try_get::<Option<f64>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                        Kind::Text => row.try_get::<Option<String>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                        Kind::Bytes => row.try_get::<Option<Vec<u8>>, _>(i).map(|v| {
                            b.push_bind(v);
                        }),
                    };
                    if let Err(e) = bound {
                        bad.get_or_insert(format!("{t}.{c}: {e}"));
                        b.push_bind(None::<i64>);
                    }
                }
            });
            if let Some(bad) = bad {
                return Err(CopyError::Refused(format!("reading SQLite: {bad}")));
            }
            q.build().execute(&mut *tx).await?;
        }
        let copied: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT count(*) FROM {}", ident(t)?)))
            .fetch_one(&mut *tx)
            .await?;
        if usize::try_from(copied).ok() != Some(rows.len()) {
            return Err(CopyError::Refused(format!(
                "table {t}: {} rows read from SQLite, {copied} in PostgreSQL",
                rows.len()
            )));
        }
        report.rows.insert(t.clone(), u64::try_from(copied).unwrap_or(0));
    }
    tx.commit().await?;
    use super::Store as _;
    from.close().await;
    to.close().await;
    Ok(report)
}
