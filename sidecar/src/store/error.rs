//! Failures below the API: SQLite itself, or a file that is not what
//! the witness wrote.

#[derive(Debug)]
pub enum StoreError {
    Sqlite(rusqlite::Error),
    /// The file or its content is not what the witness wrote.
    Corrupt(String),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Sqlite(e) => e.fmt(f),
            StoreError::Corrupt(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sqlite(e)
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
