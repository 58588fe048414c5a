//! Errors that name the file, row and field at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that cannot be turned into an example. `row` counts from 1
    /// (the line of a JSONL file, the data row of a CSV file).
    #[error("{path}, row {row}: {message}")]
    Record { path: PathBuf, row: usize, message: String },
    #[error("{path}: not a valid file of this kind: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{path}: parquet: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: arrow: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn record(path: impl Into<PathBuf>, row: usize, message: impl Into<String>) -> Self {
        DataError::Record {
            path: path.into(),
            row,
            message: message.into(),
        }
    }
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.into(),
            message: message.into(),
        }
    }
    pub fn parquet(path: impl Into<PathBuf>, source: parquet::errors::ParquetError) -> Self {
        DataError::Parquet {
            path: path.into(),
            source,
        }
    }
    pub fn arrow(path: impl Into<PathBuf>, source: arrow::error::ArrowError) -> Self {
        DataError::Arrow {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = DataError> = std::result::Result<T, E>;
