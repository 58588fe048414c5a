//! Storage by URL: where a run's shared files live when its work is spread
//! over many machines (Slurm array tasks, Kubernetes Indexed Jobs).
//!
//! A [`Store`] is a root: a plain path (a local or parallel-filesystem
//! directory), `file://`, `s3://`, `gs://` or `az://` (also `abfs://`,
//! `azure://`), through the `object_store` crate. Credentials and endpoints
//! come from the providers' usual environment variables (`AWS_*`,
//! `GOOGLE_*`, `AZURE_*`), read by the providers' builders; nothing here
//! writes them anywhere, and a [`Store`] displays as its URL without any
//! user info or query.
//!
//! The one primitive the distributed protocol relies on is
//! [`Store::put_create`]: a create-only write, which every provider and the
//! local file store honour (S3 with `If-None-Match: *`). Compare-and-swap
//! is never needed. Every write is atomic: a reader sees a whole object or
//! none.
//!
//! The API is blocking: callers are the sync stages and commands. Called
//! from inside a tokio runtime, a call runs on a scoped thread instead of
//! panicking.

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// What went wrong, always naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{url}: {reason}")]
    Url { url: String, reason: String },
    #[error("{url}: not found")]
    NotFound { url: String },
    #[error("{url}: {source}")]
    Backend {
        url: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{}: {source}", path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// This call wrote the object.
    Created,
    /// The object was there already; nothing was written.
    Exists,
}

/// One object under a prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key relative to the store's root, `/`-separated.
    pub key: String,
    pub size: u64,
}

/// The kind of store a location names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Local,
    S3,
    Gcs,
    Azure,
}

/// A root under which a run's shared files live.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: ObjPath,
    url: String,
    scheme: Scheme,
    local: Option<PathBuf>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// True when `s` names a store by URL rather than a plain path.
pub fn is_url(s: &str) -> bool {
    s.split_once("://").is_some_and(|(scheme, _)| {
        !scheme.is_empty()
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-')
    })
}

impl Store {
    /// Opens the root `location`: a plain path (created if missing), or a URL.
    pub fn open(location: &str) -> Result<Store> {
        if !is_url(location) {
            return Store::local(Path::new(location));
        }
        let parsed = url::Url::parse(location).map_err(|e| StoreError::Url {
            url: location.to_string(),
            reason: e.to_string(),
        })?;
        let shown = shown_url(&parsed);
        let bad = |reason: String| StoreError::Url {
            url: shown.clone(),
            reason,
        };
        let scheme = match parsed.scheme() {
            "file" => {
                let path = parsed
                    .to_file_path()
                    .map_err(|_| bad("not an absolute local path".into()))?;
                return Store::local(&path);
            }
            "s3" | "s3a" => Scheme::S3,
            "gs" => Scheme::Gcs,
            "az" | "abfs" | "abfss" | "azure" | "adl" => Scheme::Azure,
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?}; expected a path, file://, s3://, gs:// or az://"
                )));
            }
        };
        let inner: Arc<dyn ObjectStore> = match scheme {
            Scheme::S3 => Arc::new(
                object_store::aws::AmazonS3Builder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            Scheme::Gcs => Arc::new(
                object_store::gcp::GoogleCloudStorageBuilder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            Scheme::Azure => Arc::new(
                object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(location)
                    .build()
                    .map_err(|e| bad(e.to_string()))?,
            ),
            Scheme::Local => unreachable!("handled above"),
        };
        // The bucket (or container) is the URL's host; the root is its path.
        let root = ObjPath::from_url_path(parsed.path()).map_err(|e| bad(e.to_string()))?;
        Ok(Store {
            inner,
            root,
            url: shown.trim_end_matches('/').to_string(),
            scheme,
            local: None,
        })
    }

    /// A local directory (created if missing) as a store.
    pub fn local(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Local {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let dir = std::fs::canonicalize(dir).map_err(|e| StoreError::Local {
            path: dir.to_path_buf(),
            source: e,
        })?;
        let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| StoreError::Backend {
            url: dir.display().to_string(),
            source: e,
        })?;
        Ok(Store {
            inner: Arc::new(fs),
            root: ObjPath::default(),
            url: dir.display().to_string(),
            scheme: Scheme::Local,
            local: Some(dir),
        })
    }

    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The local directory, for a local store.
    pub fn local_dir(&self) -> Option<&Path> {
        self.local.as_deref()
    }

    /// The store rooted at `key` below this one.
    pub fn child(&self, key: &str) -> Store {
        let mut s = self.clone();
        s.root = self.path(key);
        s.url = self.url_of(key);
        s.local = self.local.as_ref().map(|d| d.join(key));
        s
    }

    /// How `key` is named in messages.
    pub fn url_of(&self, key: &str) -> String {
        format!("{}/{}", self.url, key.trim_start_matches('/'))
    }

    fn path(&self, key: &str) -> ObjPath {
        let mut p = self.root.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    fn backend<'a>(&'a self, key: &'a str) -> impl Fn(object_store::Error) -> StoreError + 'a {
        move |e| match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound { url: self.url_of(key) },
            e => StoreError::Backend {
                url: self.url_of(key),
                source: e,
            },
        }
    }

    /// The bytes of `key`.
    pub fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key);
        let inner = self.inner.clone();
        block(async move { inner.get(&path).await?.bytes().await }).map_err(self.backend(key))
    }

    /// The bytes of `key`, or `None` when there is no such object.
    pub fn get_opt(&self, key: &str) -> Result<Option<Bytes>> {
        match self.get(key) {
            Ok(b) => Ok(Some(b)),
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether `key` exists.
    pub fn exists(&self, key: &str) -> Result<bool> {
        let path = self.path(key);
        let inner = self.inner.clone();
        match block(async move { inner.head(&path).await }) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.backend(key)(e)),
        }
    }

    /// Writes `key` atomically, replacing any object there.
    pub fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<()> {
        self.put_mode(key, bytes.into(), PutMode::Overwrite).map(|_| ())
    }

    /// Writes `key` only if no object is there: the first writer wins and
    /// every later one gets [`Created::Exists`], with nothing written.
    pub fn put_create(&self, key: &str, bytes: impl Into<Bytes>) -> Result<Created> {
        self.put_mode(key, bytes.into(), PutMode::Create)
    }

    fn put_mode(&self, key: &str, bytes: Bytes, mode: PutMode) -> Result<Created> {
        let path = self.path(key);
        let inner = self.inner.clone();
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match block(async move { inner.put_opts(&path, PutPayload::from(bytes), opts).await }) {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(Created::Exists)
            }
            Err(e) => Err(self.backend(key)(e)),
        }
    }

    /// Uploads the local file `from` to `key` (create-only when `create`).
    pub fn put_file(&self, key: &str, from: &Path, create: bool) -> Result<Created> {
        let bytes = std::fs::read(from).map_err(|e| StoreError::Local {
            path: from.to_path_buf(),
            source: e,
        })?;
        let mode = if create { PutMode::Create } else { PutMode::Overwrite };
        self.put_mode(key, Bytes::from(bytes), mode)
    }

    /// Every object whose key starts with the folder `prefix` (`""` for all),
    /// sorted by key.
    pub fn list(&self, prefix: &str) -> Result<Vec<Entry>> {
        let base = self.root.clone();
        let path = self.path(prefix);
        let inner = self.inner.clone();
        let metas: Vec<object_store::ObjectMeta> =
            block(async move { inner.list(Some(&path)).try_collect().await }).map_err(self.backend(prefix))?;
        let base_parts: Vec<String> = base.parts().map(|p| p.as_ref().to_string()).collect();
        let mut out: Vec<Entry> = metas
            .into_iter()
            .map(|m| {
                let parts: Vec<String> = m.location.parts().map(|p| p.as_ref().to_string()).collect();
                Entry {
                    key: parts[base_parts.len().min(parts.len())..].join("/"),
                    size: m.size,
                }
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Removes `key`; removing what is not there is not an error. On a
    /// local store, the folders it leaves empty go too (an object store has
    /// no folders to leave behind).
    pub fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        let inner = self.inner.clone();
        match block(async move { inner.delete(&path).await }) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(self.backend(key)(e)),
        }
        if let Some(root) = &self.local {
            let mut dir = root.join(key.trim_start_matches('/'));
            while dir.pop() && dir.starts_with(root) && dir != *root {
                if std::fs::remove_dir(&dir).is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The URL as shown: no user info, no query, no fragment.
fn shown_url(u: &url::Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// The runtime the blocking calls run on: one worker is plenty for the
/// few, large requests a worker makes.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("stepwise-store")
            .enable_all()
            .build()
            .expect("the store's runtime starts")
    })
}

fn block<F>(f: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    if tokio::runtime::Handle::try_current().is_ok() {
        std::thread::scope(|s| s.spawn(|| runtime().block_on(f)).join().expect("store call panicked"))
    } else {
        runtime().block_on(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_only_write_keeps_the_first_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(s.put_create("a/b.json", "one").unwrap(), Created::Created);
        assert_eq!(s.put_create("a/b.json", "two").unwrap(), Created::Exists);
        assert_eq!(&s.get("a/b.json").unwrap()[..], b"one");
        s.put("a/b.json", "three").unwrap();
        assert_eq!(&s.get("a/b.json").unwrap()[..], b"three");
    }

    #[test]
    fn file_url_and_plain_path_name_the_same_store() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path().to_str().unwrap()).unwrap();
        let b = Store::open(&format!("file://{}", dir.path().display())).unwrap();
        a.put("x/y/z.txt", "hi").unwrap();
        assert_eq!(&b.get("x/y/z.txt").unwrap()[..], b"hi");
        assert_eq!(
            b.list("x").unwrap(),
            vec![Entry {
                key: "x/y/z.txt".into(),
                size: 2
            }]
        );
        assert!(b.child("x").exists("y/z.txt").unwrap());
        assert_eq!(b.child("x").list("").unwrap()[0].key, "y/z.txt");
    }

    #[test]
    fn deleting_the_last_object_of_a_local_folder_removes_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        s.put("a/b/c.txt", "1").unwrap();
        s.put("a/d.txt", "2").unwrap();
        s.delete("a/b/c.txt").unwrap();
        assert!(!dir.path().join("a/b").exists());
        assert!(dir.path().join("a/d.txt").exists());
    }

    #[test]
    fn missing_objects_are_named_by_url() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        let e = s.get("nope.json").unwrap_err().to_string();
        assert!(e.contains("nope.json") && e.contains("not found"), "{e}");
        assert!(s.get_opt("nope.json").unwrap().is_none());
        s.delete("nope.json").unwrap();
    }

    #[test]
    fn unknown_schemes_are_refused_with_the_allowed_ones() {
        let e = Store::open("ftp://host/x").unwrap_err().to_string();
        assert!(e.contains("ftp") && e.contains("s3://"), "{e}");
    }

    #[test]
    fn secrets_in_the_url_are_not_shown() {
        let u = url::Url::parse("s3://key:secret@bucket/run?token=abc").unwrap();
        let shown = shown_url(&u);
        assert!(!shown.contains("secret") && !shown.contains("abc"), "{shown}");
    }

    #[test]
    fn a_call_from_inside_a_runtime_does_not_panic() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path().to_str().unwrap()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async { s.put("k", "v").unwrap() });
        assert_eq!(&s.get("k").unwrap()[..], b"v");
    }
}
