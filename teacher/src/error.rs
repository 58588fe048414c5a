use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Data(#[from] stepwise_datasets::DataError),
    #[error("request failed after {attempts} attempt(s): {reason}")]
    Request { attempts: u32, reason: String },
    /// The teacher stopped answering at all: the run stops instead of retrying every request.
    #[error("the teacher is unreachable: {0}")]
    Unreachable(String),
    #[error("server: {0}")]
    Server(String),
}
