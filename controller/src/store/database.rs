//! Which database the controller keeps its state in: the embedded SQLite
//! file in the data directory (the default), or a PostgreSQL server
//! (`--database-url postgres://…`), and opening it (migrations included).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use super::{PgStore, SqliteStore, Store, StoreError};

/// A `postgres://` or `postgresql://` URL. Its password (in the user info
/// or a `password=` parameter) never shows in `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

#[derive(Debug, thiserror::Error)]
pub enum DatabaseUrlError {
    #[error(
        "database_url: {0} is not a postgres:// or postgresql:// URL \
         (leave it unset for the embedded SQLite database in data_dir)"
    )]
    Scheme(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl(url.to_owned()))
        } else {
            Err(DatabaseUrlError::Scheme(redact(url)))
        }
    }

    /// The whole URL, password included: for connecting, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", redact(&self.0))
    }
}

/// `url` with the password of its user info and the value of a
/// `password=` parameter replaced by `***`.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL)".to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let params: Vec<String> = query
                .split('&')
                .map(|p| match p.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => p.to_owned(),
                })
                .collect();
            format!("{path}?{}", params.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// Where the controller's state lives.
#[derive(Clone, Debug)]
pub enum Database {
    /// `<data_dir>/graydar.db`.
    Sqlite {
        data_dir: PathBuf,
    },
    Postgres(DatabaseUrl),
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Database::Sqlite { data_dir } => write!(f, "SQLite in {}", data_dir.display()),
            Database::Postgres(url) => write!(f, "PostgreSQL at {url}"),
        }
    }
}

/// Connects to (SQLite: creates) `db` and runs its migrations; a migration
/// that fails is the error.
pub async fn open(db: &Database) -> Result<Arc<dyn Store>, StoreError> {
    let store: Arc<dyn Store> = match db {
        Database::Sqlite { data_dir } => Arc::new(SqliteStore::open(data_dir).await?),
        Database::Postgres(url) => Arc::new(PgStore::connect(url).await?),
    };
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_are_accepted() {
        for ok in ["postgres://db/graydar", "postgresql://u@db:5432/graydar"] {
            assert_eq!(DatabaseUrl::parse(ok).expect(ok).expose(), ok);
        }
        for bad in [
            "sqlite:///var/lib/x.db",
            "mysql://u:secret@db/x",
            "/var/lib/graydar",
            "",
        ] {
            let e = DatabaseUrl::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("postgres://") && !e.contains("secret"), "{e}");
        }
    }

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "postgres://graydar:s3cret@db:5432/graydar",
                "postgres://graydar:***@db:5432/graydar",
            ),
            ("postgres://graydar@db/graydar", "postgres://graydar@db/graydar"),
            (
                "postgresql:///graydar?host=/run/pg&password=s3cret&user=g",
                "postgresql:///graydar?host=/run/pg&password=***&user=g",
            ),
            ("postgres://u:s3cret@db", "postgres://u:***@db"),
        ];
        for (url, shown) in cases {
            let u = DatabaseUrl::parse(url).expect(url);
            assert_eq!(u.to_string(), shown);
            assert!(!format!("{u:?}").contains("s3cret"));
            assert!(!format!("{:?}", Database::Postgres(u)).contains("s3cret"));
        }
    }
}
