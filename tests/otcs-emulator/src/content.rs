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
        // Multipart chunks are small (a few KiB to tens of KiB); each tokio
        // file write is a trip to the blocking pool, so gather ~1 MiB first.
        const WRITE_BLOCK: usize = 1024 * 1024;
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BLOCK);
        let store_err =
            |e: std::io::Error| ApiError::internal(format!("Cannot store content: {e}"));
        let result: Result<(), ApiError> = async {
            while let Some(chunk) = field.chunk().await.map_err(|e| {
                ApiError::bad_request(format!("Upload of '{file_name}' was interrupted: {e}"))
            })? {
                size += chunk.len() as u64;
                buf.extend_from_slice(&chunk);
                if buf.len() >= WRITE_BLOCK {
                    file.write_all(&buf).await.map_err(store_err)?;
                    buf.clear();
                }
            }
            if !buf.is_empty() {
                file.write_all(&buf).await.map_err(store_err)?;
            }
            file.flush().await.map_err(store_err)
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
