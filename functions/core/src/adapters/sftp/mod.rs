//! The ssh2 (libssh2) adapter of the `FileStore` port.
//!
//! ssh2 is blocking, so the store runs a small pool of OS threads, each
//! owning at most one SFTP session (opened lazily, reopened after a
//! connection failure). Async callers hand jobs to the thread that went
//! idle last (so sequential calls reuse one warm connection) and get
//! results back on a oneshot; file bodies flow through bounded channels
//! of ≈ 1 MiB chunks, so memory per transfer is a few MiB however large the
//! file. Parallel transfers use parallel sessions, up to `max_sessions`.
//!
//! Caveat: a streaming read or put occupies its session until the body is
//! consumed or dropped. A caller that holds `max_sessions` open reads and
//! then waits for another operation on the same store would wait forever;
//! copy flows must keep concurrent transfers below `max_sessions`.

mod conn;
mod proto;
mod russh_store;
pub mod settings;

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

pub use self::russh_store::RusshStore;
pub use self::settings::{HostKeyPin, SettingsError, SftpAuth, SftpClient, SftpSettings};
use crate::domain::paths::{RemotePath, RemoteRoot};
use crate::ports::file_store::{
    ByteStream, EntryKind, FileMeta, FileStore, FileStoreError, PageStream, PutReceipt, ReadHandle,
    RenameMode,
};
use conn::Conn;

/// Opens a store for `settings` with the SSH client they name (`client`
/// in the secret; ssh2 unless it says `russh`). No connection is made until
/// the first operation.
pub fn open_store(settings: SftpSettings) -> Result<Arc<dyn FileStore>, FileStoreError> {
    Ok(match settings.client {
        SftpClient::Ssh2 => Arc::new(SftpStore::new(settings)?),
        SftpClient::Russh => Arc::new(RusshStore::new(settings)),
    })
}

/// A dot-named sibling of `path` with a random part, e.g. `.a.pdf.1f2e3d4c.part`:
/// unique per writer, and skipped by listers that ignore dot-files.
pub(crate) fn temp_sibling(path: &RemotePath, suffix: &str) -> Result<RemotePath, FileStoreError> {
    let name = [
        b".".as_slice(),
        path.file_name(),
        format!(".{:08x}.{suffix}", fastrand::u32(..)).as_bytes(),
    ]
    .concat();
    path.with_name(name)?
        .ok_or_else(|| FileStoreError::WrongKind {
            path: path.to_string(),
            kind: EntryKind::Dir,
        })
}

/// SHA-256 and byte count of an upload body as it passes, refusing more
/// bytes than announced as soon as they arrive.
pub(crate) struct Tally {
    hasher: sha2::Sha256,
    size: u64,
    expected: Option<u64>,
}

impl Tally {
    pub(crate) fn new(expected: Option<u64>) -> Self {
        Self {
            hasher: sha2::Sha256::new(),
            size: 0,
            expected,
        }
    }

    pub(crate) fn add(&mut self, chunk: &[u8], target: &RemotePath) -> Result<(), FileStoreError> {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
        match self.expected {
            Some(expected) if self.size > expected => Err(FileStoreError::SizeMismatch {
                path: target.to_string(),
                expected,
                actual: self.size,
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The size and hex SHA-256 once the body ended; fewer bytes than
    /// announced is a mismatch.
    pub(crate) fn finish(self, target: &RemotePath) -> Result<(u64, String), FileStoreError> {
        if let Some(expected) = self.expected
            && self.size != expected
        {
            return Err(FileStoreError::SizeMismatch {
                path: target.to_string(),
                expected,
                actual: self.size,
            });
        }
        Ok((self.size, hex::encode(self.hasher.finalize())))
    }
}

/// A job runs on a session thread with that thread's (lazy) connection and
/// returns how to tell its caller it is done (send the result, close the
/// body). The thread runs that only once it is back among the idle ones,
/// so a caller that goes on at once finds this thread, and its warm
/// connection, ready.
type Job = Box<dyn FnOnce(&mut Worker) -> Done + Send>;
type Done = Box<dyn FnOnce() + Send>;

/// Chunks in flight between a session thread and async code, per transfer.
const BODY_CHANNEL: usize = 2;

/// One session thread's state.
struct Worker {
    settings: Arc<SftpSettings>,
    conn: Option<Conn>,
}

impl Worker {
    /// Runs `f` on this thread's connection, connecting first if needed. A
    /// transient failure drops the connection so the next job reconnects.
    /// `idempotent` operations that fail transiently on a *reused*
    /// connection (which may have died while idle, e.g. across a Lambda
    /// freeze) are retried once on a fresh one.
    fn run<T>(
        &mut self,
        idempotent: bool,
        mut f: impl FnMut(&Conn) -> Result<T, FileStoreError>,
    ) -> Result<T, FileStoreError> {
        let reused = self.conn.is_some();
        let first = self.run_once(&mut f);
        match first {
            Err(e) if conn::breaks_connection(&e) && reused && idempotent => {
                tracing::debug!(error = %e, "retrying on a fresh SFTP session");
                self.run_once(&mut f)
            }
            other => other,
        }
    }

    /// Drops the connection after a failure that leaves it suspect.
    fn after_error(&mut self, e: &FileStoreError) {
        if conn::breaks_connection(e) {
            self.conn = None;
        }
    }

    fn run_once<T>(
        &mut self,
        f: &mut impl FnMut(&Conn) -> Result<T, FileStoreError>,
    ) -> Result<T, FileStoreError> {
        let mut conn = match self.conn.take() {
            Some(c) if c.is_alive_after_idle(self.settings.idle_probe_after) => c,
            _ => conn::connect(&self.settings)?,
        };
        let r = f(&conn);
        conn.touch();
        match &r {
            Err(e) if conn::breaks_connection(e) => drop(conn),
            _ => self.conn = Some(conn),
        }
        r
    }
}

/// The ssh2-backed `FileStore`. Cheap to share (`Arc` it); dropping the last
/// handle lets the session threads finish their current job and exit.
pub struct SftpStore {
    settings: Arc<SftpSettings>,
    pool: Arc<Pool>,
    rename_probe: ProbeCache,
}

impl Drop for SftpStore {
    fn drop(&mut self) {
        self.pool.close();
    }
}

/// Hands jobs to the session threads, to the one that went idle last: it
/// holds the most recently used connection. (A shared queue would give each
/// job to whichever thread waited longest, so sequential calls would walk
/// the pool and open one connection per thread: an SSH handshake, and a
/// login on the partner's server, for nothing.)
struct Pool {
    state: Mutex<PoolState>,
    /// One per thread, each waited on by its own thread only.
    wake: Vec<Condvar>,
}

struct PoolState {
    /// Jobs waiting while every thread is busy, oldest first.
    queue: VecDeque<Job>,
    /// Idle threads, the one that went idle last on top.
    idle: Vec<usize>,
    /// A job handed to an idle thread, per thread.
    handed: Vec<Option<Job>>,
    closed: bool,
}

impl Pool {
    fn new(threads: usize) -> Self {
        Self {
            state: Mutex::new(PoolState {
                queue: VecDeque::new(),
                idle: Vec::with_capacity(threads),
                handed: (0..threads).map(|_| None).collect(),
                closed: false,
            }),
            wake: (0..threads).map(|_| Condvar::new()).collect(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        // Jobs run outside the lock, so a poisoned lock holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `job`, or hands it to the idle thread that went idle last.
    /// Refused once the store is dropped.
    fn submit(&self, job: Job) -> Result<(), ()> {
        let mut st = self.lock();
        if st.closed {
            return Err(());
        }
        match st.idle.pop() {
            Some(i) => {
                st.handed[i] = Some(job);
                self.wake[i].notify_one();
            }
            None => st.queue.push_back(job),
        }
        Ok(())
    }

    /// Thread `i` is done with its job: it takes the oldest queued job, or
    /// goes on top of the idle stack (and gets `None`).
    fn release(&self, i: usize) -> Option<Job> {
        let mut st = self.lock();
        if st.closed {
            return None;
        }
        if let Some(job) = st.queue.pop_front() {
            return Some(job);
        }
        // Not idle until now: it was running a job (or just started).
        st.idle.push(i);
        None
    }

    /// Waits, idle, for a job handed to thread `i`; `None` once the store
    /// is dropped.
    fn wait(&self, i: usize) -> Option<Job> {
        let mut st = self.lock();
        loop {
            if let Some(job) = st.handed[i].take() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st = self.wake[i].wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lets each thread finish its current job and exit; queued jobs are
    /// dropped (their callers see the store gone).
    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.queue.clear();
        st.idle.clear();
        for w in &self.wake {
            w.notify_one();
        }
    }
}

impl std::fmt::Debug for SftpStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpStore")
            .field("host", &self.settings.host)
            .field("port", &self.settings.port)
            .field("root", &self.settings.root)
            .finish_non_exhaustive()
    }
}

impl SftpStore {
    /// Starts `settings.max_sessions` session threads. No connection is made
    /// until the first operation; use [`SftpStore::check`] to fail fast.
    pub fn new(settings: SftpSettings) -> Result<Self, FileStoreError> {
        let settings = Arc::new(settings);
        let n = settings.max_sessions.max(1);
        let pool = Arc::new(Pool::new(n));
        for i in 0..n {
            let mine = Arc::clone(&pool);
            let mut worker = Worker {
                settings: Arc::clone(&settings),
                conn: None,
            };
            let started = std::thread::Builder::new()
                .name(format!("sftp-session-{i}"))
                .spawn(move || {
                    let pool = mine;
                    let mut next = pool.release(i).or_else(|| pool.wait(i));
                    while let Some(job) = next {
                        // A panicking job must not take the thread (and its
                        // share of the pool) down; its caller sees the
                        // dropped oneshot as an error.
                        let done = std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut worker)));
                        if done.is_err() {
                            worker.conn = None;
                        }
                        let queued = pool.release(i);
                        if let Ok(done) = done {
                            done();
                        }
                        next = queued.or_else(|| pool.wait(i));
                    }
                });
            if let Err(e) = started {
                // The threads already started would wait for jobs forever.
                pool.close();
                return Err(FileStoreError::Config(format!(
                    "cannot start SFTP thread: {e}"
                )));
            }
        }
        Ok(Self {
            settings,
            pool,
            rename_probe: ProbeCache::default(),
        })
    }

    fn gone(op: &'static str, path: &RemotePath) -> FileStoreError {
        FileStoreError::Transient {
            op,
            path: path.to_string(),
            reason: "SFTP session thread stopped".into(),
        }
    }

    /// Runs `f` on a session thread and awaits its result.
    async fn call<T: Send + 'static>(
        &self,
        op: &'static str,
        path: &RemotePath,
        f: impl FnOnce(&mut Worker) -> Result<T, FileStoreError> + Send + 'static,
    ) -> Result<T, FileStoreError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |w| {
            let r = f(w);
            Box::new(move || {
                let _ = tx.send(r);
            })
        });
        self.pool.submit(job).map_err(|_| Self::gone(op, path))?;
        rx.await.map_err(|_| Self::gone(op, path))?
    }

    /// Refuses a no-replace `op` onto `to` when this server's rename
    /// replaces existing targets (probed once, in `to`'s directory): libssh2
    /// cannot send `hardlink@openssh.com`, so there is no safe way.
    async fn refuse_if_rename_replaces(
        &self,
        op: &'static str,
        to: &RemotePath,
    ) -> Result<(), FileStoreError> {
        let dir = to.parent().ok_or_else(|| FileStoreError::WrongKind {
            path: to.to_string(),
            kind: EntryKind::Dir,
        })?;
        let probe = self
            .rename_probe
            .get_or_probe(|| {
                let d = dir.clone();
                self.call("probe", &dir, move |w| w.run(false, |c| c.probe_rename(&d)))
            })
            .await?;
        match probe {
            RenameProbe::Refuses => Ok(()),
            RenameProbe::Replaces => Err(rename_replaces(
                op,
                to,
                "the ssh2 client cannot send hardlink@openssh.com to do it safely; use \"client\": \"russh\" if the server offers it, or a server whose rename refuses existing targets",
            )),
        }
    }

    fn check_within(&self, p: &RemotePath) -> Result<(), FileStoreError> {
        // Paths are checked against *a* root when built; make sure it is ours
        // so a path made for one route cannot be used on another's store.
        self.settings.root.resolve_bytes(p.as_bytes())?;
        Ok(())
    }
}

#[async_trait]
impl FileStore for SftpStore {
    fn root(&self) -> &RemoteRoot {
        &self.settings.root
    }

    async fn list_pages(&self, dir: &RemotePath) -> Result<PageStream, FileStoreError> {
        self.check_within(dir)?;
        let (tx, rx) = mpsc::channel(BODY_CHANNEL);
        let d = dir.clone();
        let (open_tx, open_rx) = oneshot::channel();
        let job: Job = Box::new(move |w| {
            // Opening is retried on a stale session; reading the entries is
            // not, as pages may already have been delivered.
            let handle = match w.run(true, |c| c.opendir(&d)) {
                Ok(h) => h,
                Err(e) => {
                    return Box::new(move || {
                        let _ = open_tx.send(Err(e));
                    });
                }
            };
            let _ = open_tx.send(Ok(()));
            let r = conn::list_from(&d, handle, &tx);
            if let Err(e) = r {
                w.after_error(&e);
                let _ = tx.blocking_send(Err(e));
            }
            // The listing ends for the caller when the channel closes.
            Box::new(move || drop(tx))
        });
        self.pool.submit(job).map_err(|_| Self::gone("list", dir))?;
        open_rx.await.map_err(|_| Self::gone("list", dir))??;
        Ok(Box::pin(ReceiverStream::new(rx)))
    }

    async fn stat(&self, path: &RemotePath) -> Result<FileMeta, FileStoreError> {
        self.check_within(path)?;
        let p = path.clone();
        self.call("stat", path, move |w| w.run(true, |c| c.stat(&p)))
            .await
    }

    async fn open_read(&self, path: &RemotePath) -> Result<ReadHandle, FileStoreError> {
        self.check_within(path)?;
        let (tx, rx) = mpsc::channel(BODY_CHANNEL);
        let (meta_tx, meta_rx) = oneshot::channel();
        let p = path.clone();
        let job: Job = Box::new(move |w| {
            let (f, meta) = match w.run(true, |c| c.open_read(&p)) {
                Ok(x) => x,
                Err(e) => {
                    return Box::new(move || {
                        let _ = meta_tx.send(Err(e));
                    });
                }
            };
            let size_hint = meta.size;
            let _ = meta_tx.send(Ok(meta));
            if let Err(e) = conn::stream_file(&p, f, size_hint, &tx) {
                w.after_error(&e);
                let _ = tx.blocking_send(Err(e));
            }
            // The body ends for the caller when the channel closes.
            Box::new(move || drop(tx))
        });
        self.pool
            .submit(job)
            .map_err(|_| Self::gone("open", path))?;
        let meta = meta_rx.await.map_err(|_| Self::gone("open", path))??;
        Ok(ReadHandle {
            meta,
            body: Box::pin(ReceiverStream::new(rx)),
        })
    }

    async fn put_atomic(
        &self,
        path: &RemotePath,
        mut body: ByteStream,
        expected_len: Option<u64>,
        mode: RenameMode,
    ) -> Result<PutReceipt, FileStoreError> {
        self.check_within(path)?;
        if mode == RenameMode::NoReplace {
            // Before a byte of the body is read.
            self.refuse_if_rename_replaces("put", path).await?;
        }
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, FileStoreError>>(BODY_CHANNEL);
        let p = path.clone();
        let (res_tx, res_rx) = oneshot::channel();
        let job: Job = Box::new(move |w| {
            // Not retried: the body is a one-shot stream.
            let settings = Arc::clone(&w.settings);
            let r = w.run(false, |c| {
                c.put_atomic(&settings, &p, &mut rx, expected_len, mode)
            });
            Box::new(move || {
                let _ = res_tx.send(r);
            })
        });
        self.pool.submit(job).map_err(|_| Self::gone("put", path))?;
        // Small chunks (an HTTP download yields ~16 KiB frames) are gathered
        // into ≥ 1 MiB pieces first: each piece is one hand-over to the
        // session thread, and per-chunk hand-overs cost a context switch each.
        let mut acc = bytes::BytesMut::new();
        let mut ended_early = false;
        while let Some(item) = body.next().await {
            let item = match item {
                Ok(chunk) if chunk.len() >= conn::CHUNK_TARGET && acc.is_empty() => Ok(chunk),
                Ok(chunk) => {
                    acc.extend_from_slice(&chunk);
                    if acc.len() < conn::CHUNK_TARGET {
                        continue;
                    }
                    Ok(acc.split().freeze())
                }
                Err(e) => Err(FileStoreError::source(path, e)),
            };
            let failed = item.is_err();
            // A send error means the session gave up (its error comes on
            // res_rx); stop pulling the body.
            if tx.send(item).await.is_err() || failed {
                acc.clear();
                ended_early = true;
                break;
            }
        }
        if !acc.is_empty() {
            let _ = tx.send(Ok(acc.freeze())).await;
        }
        if !ended_early {
            // The end marker (empty chunks are never sent otherwise): if
            // this future is dropped before here, the session thread sees
            // the channel close without it and does not rename a partial
            // body into place.
            let _ = tx.send(Ok(Bytes::new())).await;
        }
        drop(tx);
        res_rx.await.map_err(|_| Self::gone("put", path))?
    }

    async fn mkdir_all(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(dir)?;
        let d = dir.clone();
        self.call("mkdir", dir, move |w| w.run(true, |c| c.mkdir_all(&d)))
            .await
    }

    async fn rename(
        &self,
        from: &RemotePath,
        to: &RemotePath,
        mode: RenameMode,
    ) -> Result<(), FileStoreError> {
        self.check_within(from)?;
        self.check_within(to)?;
        if mode == RenameMode::NoReplace {
            self.refuse_if_rename_replaces("rename", to).await?;
        }
        let (f, t) = (from.clone(), to.clone());
        // Not retried: after a lost reply the rename may have happened, and
        // a retry would then report NotFound for a rename that won.
        self.call("rename", from, move |w| {
            w.run(false, |c| c.rename(&f, &t, mode))
        })
        .await
    }

    async fn remove(&self, path: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(path)?;
        let p = path.clone();
        self.call("remove", path, move |w| w.run(false, |c| c.remove(&p)))
            .await
    }

    async fn remove_dir(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(dir)?;
        let d = dir.clone();
        self.call("rmdir", dir, move |w| w.run(false, |c| c.remove_dir(&d)))
            .await
    }

    async fn verify_no_replace(&self, dir: &RemotePath) -> Result<(), FileStoreError> {
        self.check_within(dir)?;
        // The probe lies in `dir`: any name in it stands for the target.
        let probe_target = dir.join(b"x")?;
        self.refuse_if_rename_replaces("verify", &probe_target)
            .await
            .map_err(|e| match e {
                FileStoreError::Unsupported { op, reason, .. } => FileStoreError::Unsupported {
                    op,
                    path: dir.to_string(),
                    reason,
                },
                e => e,
            })
    }
}

/// One step of the adapters' deepest-first `mkdir -p`: what a refused
/// mkdir of `path` means, given what a stat then saw there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MkdirStep {
    /// The mkdir succeeded.
    Made,
    /// A directory is there (already, or made concurrently).
    Exists,
    /// Nothing is there: the parent must be missing; go one level up.
    ParentMissing,
}

impl MkdirStep {
    /// After a refused mkdir: a directory there is fine; another kind of
    /// entry is `WrongKind`; nothing there means a missing parent, unless
    /// `top` (no parent below the root to make, or a level whose parent was
    /// just made), where the refusal itself is the error.
    pub(crate) fn after_refusal(
        path: &RemotePath,
        seen: Option<FileMeta>,
        top: bool,
        refusal: impl FnOnce() -> FileStoreError,
    ) -> Result<Self, FileStoreError> {
        match seen {
            Some(m) if m.kind == EntryKind::Dir => Ok(Self::Exists),
            Some(m) => Err(FileStoreError::WrongKind {
                path: path.to_string(),
                kind: m.kind,
            }),
            None if top => Err(refusal()),
            None => Ok(Self::ParentMissing),
        }
    }
}

/// What a probe showed a server's plain SFTP rename does to an existing
/// target. OpenSSH's sftp-server refuses (it links, then unlinks); some
/// servers call rename(2), which replaces silently, and then "two claims,
/// one wins" and "never overwrite a first delivery" would not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenameProbe {
    Refuses,
    Replaces,
}

/// The probe's result, found once per store (one server) by the first
/// no-replace rename or [`FileStore::verify_no_replace`], in that
/// operation's own directory (a work folder the route writes anyway).
#[derive(Debug, Default)]
pub(crate) struct ProbeCache(tokio::sync::Mutex<Option<RenameProbe>>);

impl ProbeCache {
    /// The cached result, or `probe`'s (concurrent first callers wait for
    /// one probe). A failed probe is not cached.
    pub(crate) async fn get_or_probe<F, Fut>(&self, probe: F) -> Result<RenameProbe, FileStoreError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<RenameProbe, FileStoreError>>,
    {
        let mut g = self.0.lock().await;
        if let Some(r) = *g {
            return Ok(r);
        }
        let r = probe().await?;
        if r == RenameProbe::Replaces {
            tracing::warn!(
                "this SFTP server's rename replaces an existing target; no-replace renames are refused or made with hardlink@openssh.com"
            );
        }
        *g = Some(r);
        Ok(r)
    }
}

/// The two dot-files of a rename probe in `dir`.
pub(crate) fn probe_paths(dir: &RemotePath) -> Result<(RemotePath, RemotePath), FileStoreError> {
    let tag = format!("{:08x}", fastrand::u32(..));
    Ok((
        dir.join(format!(".xecm-rename-probe.{tag}.a").as_bytes())?,
        dir.join(format!(".xecm-rename-probe.{tag}.b").as_bytes())?,
    ))
}

/// The refusal of a no-replace rename onto `path` on a replacing server.
pub(crate) fn rename_replaces(op: &'static str, path: &RemotePath, hint: &str) -> FileStoreError {
    FileStoreError::Unsupported {
        op,
        path: path.to_string(),
        reason: format!(
            "this SFTP server's rename replaces an existing target (a probe in the same \
             directory showed it), so a no-replace rename (a claim, a first delivery) could \
             overwrite a file silently; {hint}"
        ),
    }
}
