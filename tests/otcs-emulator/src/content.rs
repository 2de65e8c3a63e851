//! Document content on disk: uploads are streamed into files chunk by chunk
//! and downloads stream back out, so memory stays flat for any file size.

use std::path::{Path, PathBuf};

use axum::extract::multipart::Field;
use tokio::io::AsyncWriteExt;

use crate::error::{ApiError, Error};

pub struct ContentStore {
    dir: PathBuf,
    // Keeps an in-memory run's content directory alive; removed on drop.
    _temp: Option<tempfile::TempDir>,
}

/// A file part written to disk.
pub struct Stored {
    pub name: String,
    pub size: u64,
    pub file_name: String,
    pub mime_type: String,
}

impl ContentStore {
    pub fn open(data_dir: Option<&Path>) -> Result<ContentStore, Error> {
        match data_dir {
            Some(d) => {
                let dir = d.join("content");
                std::fs::create_dir_all(&dir).map_err(|source| Error::Content {
                    path: dir.clone(),
                    source,
                })?;
                Ok(ContentStore { dir, _temp: None })
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("otcs-emulator-")
                    .tempdir()
                    .map_err(|source| Error::Content {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                Ok(ContentStore {
                    dir: temp.path().to_path_buf(),
                    _temp: Some(temp),
                })
            }
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Streams one multipart file part to a new file.
    pub async fn store_field(&self, mut field: Field<'_>) -> Result<Stored, ApiError> {
        let file_name = field.file_name().unwrap_or("content").to_string();
        let mime_type = field
            .content_type()
            .map(str::to_string)
            .unwrap_or_else(|| "application/octet-stream".to_string());
        let name = format!(
            "c-{}-{:016x}.bin",
            chrono::Utc::now().timestamp_micros(),
            fastrand::u64(..)
        );
        let path = self.path(&name);
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::internal(format!("Cannot store content: {e}")))?;
        let mut size: u64 = 0;
        let result: Result<(), ApiError> = async {
            while let Some(chunk) = field.chunk().await.map_err(|e| {
                ApiError::bad_request(format!("Upload of '{file_name}' was interrupted: {e}"))
            })? {
                size += chunk.len() as u64;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| ApiError::internal(format!("Cannot store content: {e}")))?;
            }
            file.flush()
                .await
                .map_err(|e| ApiError::internal(format!("Cannot store content: {e}")))
        }
        .await;
        if let Err(e) = result {
            self.remove(&name);
            return Err(e);
        }
        Ok(Stored {
            name,
            size,
            file_name,
            mime_type,
        })
    }

    pub fn remove(&self, name: &str) {
        if let Err(e) = std::fs::remove_file(self.path(name)) {
            tracing::warn!(file = name, error = %e, "cannot remove content file");
        }
    }
}
