//! Child processes of the local stack: each runs in its own process group and
//! is stopped (SIGTERM, then SIGKILL) when its guard is dropped, also when a
//! test panics, so no stray process outlives a test or the demo.

use std::io;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// A running child process that is stopped with its whole process group on drop.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
}

impl ChildGuard {
    /// Spawns `cmd` in a new process group.
    pub fn spawn(name: impl Into<String>, mut cmd: Command) -> io::Result<Self> {
        use std::os::unix::process::CommandExt;
        let name = name.into();
        cmd.process_group(0);
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        Ok(Self {
            name,
            child: Some(child),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(status)` if the process has already exited.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
        }
    }

    /// Stops the process group: SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = i32::try_from(child.id()).unwrap_or(0);
        // Never signal group 0 (our own) or -1 (every process).
        if pgid <= 1 {
            let _ = child.kill();
            let _ = child.wait();
            return;
        }
        // SAFETY: kill(2) with a negative pid signals the process group we
        // created for this child; it touches no memory.
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if start.elapsed() < grace => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    // SAFETY: as above.
                    unsafe {
                        libc::kill(-pgid, libc::SIGKILL);
                    }
                    let _ = child.wait();
                    break;
                }
            }
        }
        // Reap anything else left in the group (children of the child).
        // SAFETY: as above; ESRCH when the group is already gone is fine.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// A free TCP port on 127.0.0.1 (bound, read and released; the small race
/// with other processes is acceptable on a test machine).
pub fn free_port() -> io::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`, or
/// fails with the process's name once `timeout` has passed or it exited.
pub fn wait_for_port(guard: &mut ChildGuard, port: u16, timeout: Duration) -> io::Result<()> {
    let start = Instant::now();
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = guard.try_wait()? {
            return Err(io::Error::other(format!(
                "{} exited before listening on port {port}: {status}",
                guard.name()
            )));
        }
        if start.elapsed() > timeout {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "{} did not listen on port {port} within {timeout:?}",
                    guard.name()
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Environment variable naming the CPUs benchmark contenders run on
/// (`taskset -c` syntax). The benchmark scripts set it to `0` and run the
/// servers on CPU 1, as TOOLCHAIN's two-core method asks.
pub const CONTENDER_CPUS_ENV: &str = "XECM_BENCH_CONTENDER_CPUS";

/// A command for a benchmark contender (the function, a client, a script):
/// pinned with `taskset` to the CPUs in [`CONTENDER_CPUS_ENV`] when it is
/// set, otherwise a plain command.
pub fn contender(program: impl AsRef<std::ffi::OsStr>) -> Command {
    match std::env::var(CONTENDER_CPUS_ENV) {
        Ok(cpus) if !cpus.trim().is_empty() => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(cpus.trim()).arg(program);
            cmd
        }
        _ => Command::new(program),
    }
}
