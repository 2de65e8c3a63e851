//! Document content on disk: uploads are streamed into files chunk by chunk
//! and downloads stream back out, so memory stays flat for any file size.

use std::path::{Path, PathBuf};

use axum::extract::multipart::Field;

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
        let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
        let (back_tx, mut back_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::task::spawn_blocking(move || write_behind(&path, rx, back_tx));
        let mut size: u64 = 0;
        // Multipart chunks are small (a few KiB to tens of KiB): gather
        // ~1 MiB, hand it to the writer thread and go on receiving while it
        // writes; the writer hands the emptied buffers back.
        const WRITE_BLOCK: usize = 1024 * 1024;
        let mut buf: Vec<u8> = Vec::with_capacity(WRITE_BLOCK);
        let received: Result<(), ApiError> = async {
            while let Some(chunk) = field.chunk().await.map_err(|e| {
                ApiError::bad_request(format!("Upload of '{file_name}' was interrupted: {e}"))
            })? {
                size += chunk.len() as u64;
                buf.extend_from_slice(&chunk);
                if buf.len() >= WRITE_BLOCK {
                    let next = back_rx
                        .try_recv()
                        .unwrap_or_else(|_| Vec::with_capacity(WRITE_BLOCK));
                    let full = std::mem::replace(&mut buf, next);
                    // A closed channel means the writer stopped on an error,
                    // which joining it below reports.
                    if tx.send(full).await.is_err() {
                        break;
                    }
                }
            }
            if !buf.is_empty() {
                let _ = tx.send(std::mem::take(&mut buf)).await;
            }
            Ok(())
        }
        .await;
        drop(tx);
        let written = match writer.await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
        .map_err(|e| ApiError::internal(format!("Cannot store content: {e}")));
        let result = received.and(written);
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

/// Streams a stored file, read by a thread of its own straight into the
/// blocks it sends (one copy out of the page cache instead of two) and a
/// few blocks ahead of the connection.
pub fn read_ahead(
    mut file: std::fs::File,
) -> tokio_stream::wrappers::ReceiverStream<std::io::Result<bytes::Bytes>> {
    const BLOCK: usize = 1024 * 1024;
    const AHEAD: usize = 2;
    let (tx, rx) = tokio::sync::mpsc::channel(AHEAD);
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        loop {
            let mut buf = Vec::with_capacity(BLOCK);
            let item = match (&mut file).take(BLOCK as u64).read_to_end(&mut buf) {
                Ok(0) => return,
                Ok(_) => Ok(bytes::Bytes::from(buf)),
                Err(e) => Err(e),
            };
            let failed = item.is_err();
            // A closed channel: the client went away.
            if tx.blocking_send(item).is_err() || failed {
                return;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Writes the blocks of one upload in order and keeps its page-cache
/// footprint small: written ranges are sent to disk as they complete and
/// dropped from the cache a few megabytes behind the write head. Without
/// this a 1 GiB upload leaves 1 GiB of dirty cache, the next upload gets
/// fresh pages for everything it writes, and on a VM whose free memory goes
/// back to the host (balloon free-page reporting) every such page costs a
/// fault on first touch: that, not the transfer, then dominated the
/// emulator's share of a benchmark.
fn write_behind(
    path: &Path,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    back: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(path)?;
    let mut cache = CacheTrim::default();
    while let Some(mut block) = rx.blocking_recv() {
        file.write_all(&block)?;
        cache.written(&file, block.len() as u64);
        block.clear();
        let _ = back.send(block);
    }
    file.flush()
}

/// Bookkeeping for [`write_behind`]: ranges of `UNIT` bytes are queued for
/// writeback when complete and dropped from the cache `LAG` units later.
#[derive(Default)]
struct CacheTrim {
    written: u64,
    queued: u64,
    dropped: u64,
}

impl CacheTrim {
    const UNIT: u64 = 8 * 1024 * 1024;
    const LAG: u64 = 2;

    #[cfg(target_os = "linux")]
    fn written(&mut self, file: &std::fs::File, n: u64) {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        self.written += n;
        // Failures only mean the cache is not trimmed, never a wrong file.
        let sync = |off: u64, flags: libc::c_uint| {
            // SAFETY: a plain syscall on a descriptor `file` keeps open.
            unsafe {
                libc::sync_file_range(fd, off as libc::off64_t, Self::UNIT as libc::off64_t, flags)
            };
        };
        while self.written - self.queued >= Self::UNIT {
            sync(self.queued, libc::SYNC_FILE_RANGE_WRITE);
            self.queued += Self::UNIT;
            if self.queued - self.dropped > Self::LAG * Self::UNIT {
                sync(
                    self.dropped,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE
                        | libc::SYNC_FILE_RANGE_WRITE
                        | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
                // SAFETY: as above.
                unsafe {
                    libc::posix_fadvise(
                        fd,
                        self.dropped as libc::off64_t,
                        Self::UNIT as libc::off64_t,
                        libc::POSIX_FADV_DONTNEED,
                    )
                };
                self.dropped += Self::UNIT;
            }
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn written(&mut self, _file: &std::fs::File, n: u64) {
        self.written += n;
    }
}
