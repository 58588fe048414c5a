use std::path::PathBuf;

/// Errors at the student crate's boundary.
#[derive(Debug, thiserror::Error)]
pub enum StudentError {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("training config: {0}")]
    Config(String),
    #[error("device: {0}")]
    Device(String),
    #[error(transparent)]
    Data(#[from] stepwise_datasets::DataError),
}

pub type Result<T> = std::result::Result<T, StudentError>;

pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StudentError + '_ {
    move |source| StudentError::Io {
        path: path.to_path_buf(),
        source,
    }
}
