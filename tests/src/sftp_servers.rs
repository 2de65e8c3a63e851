//! SFTP servers other than OpenSSH's, for the interop suite
//! (`tests/tests/interop.rs`): each [`SftpServer`] is one server process on
//! 127.0.0.1 and a free port with its own host key, a fresh ed25519 client
//! key (key authentication only) and a writable data root, stopped with
//! every process it forked when dropped (also when a test panics).
//!
//! | kind | what runs | SFTP root | account |
//! |---|---|---|---|
//! | `OpenSsh` | [`crate::sshd::Sshd`] (`internal-sftp`, chroot) | `/data` | `xecm-sftp` |
//! | `ProFtpd` | ProFTPD 1.3.8 `mod_sftp` (Debian `proftpd-core` + `proftpd-mod-crypto`), `DefaultRoot` chroot | `/data` | `xecm-sftp` |
//! | `Dropbear` | Dropbear (Debian `dropbear-bin`, default 24 KiB window) + OpenSSH's `sftp-server` | the instance's absolute path | `xecm-sftp-sh` |
//! | `Tinysshd` | tinysshd (Debian `tinysshd`, chacha20-poly1305 only), one process per connection from our accept loop, + OpenSSH's `sftp-server` | absolute path | `xecm-sftp-sh` |
//! | `Asyncssh` | asyncssh's own SFTP server (PyPI), binary handles | `/data` | any name |
//! | `Paramiko` | a paramiko server whose rename is POSIX `rename(2)` (replaces targets) | `/data` | any name |
//!
//! Dropbear and tinysshd read `~/.ssh/authorized_keys` of a real account
//! with a login shell, so they share the system account `xecm-sftp-sh`
//! (shell `/bin/sh`, no password, home under `/var/lib/xecm-stack`); each
//! instance appends its client key there and removes it again on drop.
//! The Python servers run from the venv `tests/lib/prereqs.sh` makes
//! (`XECM_SFTP_SERVERS_PYTHON`, default `~/.cache/xecm-sftp/venv-sftp-servers`).

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use crate::process::ChildGuard;
use crate::sshd::{KEY_USER, Sshd};

const STATE_DIR: &str = "/var/lib/xecm-stack";
const RUN_DIR: &str = "/run/xecm-stack";
/// The account Dropbear and tinysshd log in (they need a login shell).
pub const SHELL_USER: &str = "xecm-sftp-sh";
const SHELL_HOME: &str = "/var/lib/xecm-stack/home-sh";
const SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

const ASYNCSSH_SCRIPT: &str = include_str!("sftp_servers/asyncssh_server.py");
const PARAMIKO_SCRIPT: &str = include_str!("sftp_servers/paramiko_server.py");

/// The server implementations of the interop suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    OpenSsh,
    ProFtpd,
    Dropbear,
    Tinysshd,
    Asyncssh,
    Paramiko,
}

impl ServerKind {
    pub const ALL: [ServerKind; 6] = [
        ServerKind::OpenSsh,
        ServerKind::ProFtpd,
        ServerKind::Dropbear,
        ServerKind::Tinysshd,
        ServerKind::Asyncssh,
        ServerKind::Paramiko,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServerKind::OpenSsh => "OpenSSH sshd",
            ServerKind::ProFtpd => "ProFTPD mod_sftp",
            ServerKind::Dropbear => "Dropbear + sftp-server",
            ServerKind::Tinysshd => "tinysshd + sftp-server",
            ServerKind::Asyncssh => "asyncssh",
            ServerKind::Paramiko => "paramiko (POSIX rename)",
        }
    }
}

enum Running {
    OpenSsh(Box<Sshd>),
    // Held to stop the server on drop.
    Child { _guard: ChildGuard },
    PerConnection { _acceptor: AcceptLoop },
}

/// A running SFTP server of some kind; stopped on drop.
pub struct SftpServer {
    // Dropped first: the processes, then the key line, then the files.
    running: Running,
    _key_line: Option<KeyLine>,
    kind: ServerKind,
    port: u16,
    fingerprint: String,
    client_key: String,
    username: String,
    remote_root: String,
    data_root: PathBuf,
    log: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for SftpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SftpServer")
            .field("kind", &self.kind)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn need(path: &str, package: &str) -> Result<()> {
    if Path::new(path).exists() {
        Ok(())
    } else {
        bail!("{path} is missing: install Debian package {package} (tests/lib/prereqs.sh does)")
    }
}

fn ssh_keygen(path: &Path, args: &[&str]) -> Result<()> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-C", "xecm-interop", "-N", "", "-f"])
        .arg(path)
        .args(args))?;
    Ok(())
}

/// `SHA256:...` of a public key line.
fn fingerprint_of_line(dir: &Path, line: &str) -> Result<String> {
    let p = dir.join("host_key_for_fp.pub");
    fs::write(&p, format!("{}\n", line.trim()))?;
    let out = run(Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(&p))?;
    out.split_whitespace()
        .nth(1)
        .filter(|f| f.starts_with("SHA256:"))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("unexpected ssh-keygen -l output: {out}"))
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Waits until the port answers with an SSH banner.
fn wait_banner(guard: Option<&mut ChildGuard>, port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut guard = guard;
    loop {
        if let Some(g) = guard.as_deref_mut()
            && let Some(status) = g.try_wait()?
        {
            bail!(
                "{} exited ({status}): {}",
                g.name(),
                fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut banner = [0u8; 4];
            if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no SSH server on port {port} within 20 s: {}",
                fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn instance_dir(prefix: &str) -> Result<tempfile::TempDir> {
    fs::create_dir_all(STATE_DIR)?;
    fs::set_permissions(STATE_DIR, fs::Permissions::from_mode(0o755))?;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(STATE_DIR)?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

fn chown(user: &str, path: &Path) -> Result<()> {
    run(Command::new("chown")
        .arg(format!("{user}:{user}"))
        .arg(path))?;
    Ok(())
}

/// The shell account for Dropbear and tinysshd, created once.
fn ensure_shell_user() -> Result<()> {
    fs::create_dir_all(RUN_DIR)?;
    let lock = fs::File::create(Path::new(RUN_DIR).join("setup.lock"))?;
    lock.lock().context("locking account set-up")?;
    let exists = Command::new("id")
        .args(["-u", SHELL_USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !exists {
        fs::create_dir_all(STATE_DIR)?;
        run(Command::new("useradd")
            .args(["--system", "--no-create-home", "--home-dir", SHELL_HOME])
            .args(["--shell", "/bin/sh", "--user-group", SHELL_USER]))?;
    }
    // `*`: no password, but not locked (sshd-style servers treat `!` as
    // locked for key logins too).
    run(Command::new("usermod").args(["-p", "*", SHELL_USER]))?;
    let ssh = Path::new(SHELL_HOME).join(".ssh");
    fs::create_dir_all(&ssh)?;
    chown(SHELL_USER, Path::new(SHELL_HOME))?;
    chown(SHELL_USER, &ssh)?;
    fs::set_permissions(SHELL_HOME, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
    let ak = ssh.join("authorized_keys");
    if !ak.exists() {
        fs::write(&ak, "")?;
    }
    chown(SHELL_USER, &ak)?;
    fs::set_permissions(&ak, fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A client key line in `xecm-sftp-sh`'s authorized_keys, removed on drop.
struct KeyLine {
    line: String,
}

impl KeyLine {
    fn add(line: String) -> Result<Self> {
        let _l = Self::lock()?;
        let ak = Path::new(SHELL_HOME).join(".ssh/authorized_keys");
        let mut f = fs::OpenOptions::new().append(true).open(&ak)?;
        f.write_all(format!("{}\n", line.trim()).as_bytes())?;
        Ok(Self {
            line: line.trim().to_owned(),
        })
    }

    fn lock() -> Result<fs::File> {
        let lock = fs::File::create(Path::new(RUN_DIR).join("sh-keys.lock"))?;
        lock.lock().context("locking authorized_keys")?;
        Ok(lock)
    }
}

impl Drop for KeyLine {
    fn drop(&mut self) {
        let Ok(_l) = Self::lock() else { return };
        let ak = Path::new(SHELL_HOME).join(".ssh/authorized_keys");
        if let Ok(all) = fs::read_to_string(&ak) {
            let kept: String = all
                .lines()
                .filter(|l| l.trim() != self.line)
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = fs::write(&ak, kept);
        }
    }
}

/// An inetd-style accept loop: one `tinysshd` process per connection, its
/// stdin and stdout the socket. Stops (and kills its children) on drop.
struct AcceptLoop {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AcceptLoop {
    fn start(listener: TcpListener, cmd: Vec<String>, log: PathBuf) -> Result<Self> {
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("tinysshd-accept".into())
            .spawn(move || {
                let mut kids: Vec<ChildGuard> = Vec::new();
                while !stopping.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((sock, _)) => {
                            let _ = sock.set_nonblocking(false);
                            let Ok(out) = sock.try_clone() else { continue };
                            let Ok(err) =
                                fs::OpenOptions::new().append(true).create(true).open(&log)
                            else {
                                continue;
                            };
                            let mut c = Command::new(&cmd[0]);
                            c.args(&cmd[1..])
                                .stdin(Stdio::from(std::os::fd::OwnedFd::from(sock)))
                                .stdout(Stdio::from(std::os::fd::OwnedFd::from(out)))
                                .stderr(Stdio::from(err));
                            if let Ok(g) = ChildGuard::spawn("tinysshd", c) {
                                kids.push(g);
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                    // Reap finished connections.
                    kids.retain_mut(|k| !matches!(k.try_wait(), Ok(Some(_))));
                }
                for mut k in kids {
                    k.stop(Duration::from_millis(200));
                }
            })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for AcceptLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Python of the venv with asyncssh and paramiko.
pub fn servers_python() -> PathBuf {
    if let Some(p) = std::env::var_os("XECM_SFTP_SERVERS_PYTHON") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    let cache = std::env::var_os("XECM_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(home).join(".cache/xecm-sftp"));
    cache.join("venv-sftp-servers/bin/python")
}

impl SftpServer {
    /// Starts a server of `kind`.
    pub fn start(kind: ServerKind) -> Result<Self> {
        match kind {
            ServerKind::OpenSsh => Self::openssh(),
            ServerKind::ProFtpd => Self::proftpd(),
            ServerKind::Dropbear => Self::dropbear(),
            ServerKind::Tinysshd => Self::tinysshd(),
            ServerKind::Asyncssh => Self::python(kind, "asyncssh_server.py", ASYNCSSH_SCRIPT),
            ServerKind::Paramiko => Self::python(kind, "paramiko_server.py", PARAMIKO_SCRIPT),
        }
        .with_context(|| format!("starting {}", kind.name()))
    }

    fn openssh() -> Result<Self> {
        let sshd = Sshd::start()?;
        Ok(Self {
            kind: ServerKind::OpenSsh,
            port: sshd.port(),
            fingerprint: sshd.host_key_fingerprint().to_owned(),
            client_key: sshd.client_private_key().to_owned(),
            username: sshd.username().to_owned(),
            remote_root: sshd.remote_root().to_owned(),
            data_root: sshd.data_root(),
            log: PathBuf::new(),
            running: Running::OpenSsh(Box::new(sshd)),
            _key_line: None,
            _dir: None,
        })
    }

    fn client_key(d: &Path) -> Result<(String, String)> {
        ssh_keygen(&d.join("client_key"), &["-t", "ed25519"])?;
        Ok((
            fs::read_to_string(d.join("client_key"))?,
            fs::read_to_string(d.join("client_key.pub"))?,
        ))
    }

    fn proftpd() -> Result<Self> {
        need("/usr/sbin/proftpd", "proftpd-core")?;
        need("/usr/lib/proftpd/mod_sftp.so", "proftpd-mod-crypto")?;
        // The `xecm-sftp` account (made by the sshd helper).
        drop(Sshd::ensure_accounts_for_others()?);
        let dir = instance_dir("proftpd-")?;
        let d = dir.path();
        let chroot = d.join("chroot");
        let data = chroot.join("data");
        fs::create_dir_all(&data)?;
        chown(KEY_USER, &data)?;
        let (client_key, client_pub) = Self::client_key(d)?;
        // mod_sftp wants RFC 4716 user keys.
        let rfc4716 = run(Command::new("ssh-keygen")
            .args(["-e", "-f"])
            .arg(d.join("client_key.pub")))?;
        let ak = d.join("authorized_keys");
        fs::create_dir_all(&ak)?;
        fs::write(ak.join(KEY_USER), rfc4716)?;
        let _ = client_pub;
        ssh_keygen(
            &d.join("host_key"),
            &["-t", "ecdsa", "-b", "256", "-m", "PEM"],
        )?;
        let fingerprint = fingerprint_of_line(d, &fs::read_to_string(d.join("host_key.pub"))?)?;
        let log = d.join("proftpd.log");
        let mut last = anyhow!("not started");
        for _ in 0..5 {
            let port = free_port()?;
            let conf = d.join("proftpd.conf");
            fs::write(&conf, proftpd_conf(d, port))?;
            let mut cmd = Command::new("/usr/sbin/proftpd");
            cmd.args(["-n", "-c"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?);
            let mut g = ChildGuard::spawn("proftpd", cmd)?;
            match wait_banner(Some(&mut g), port, &log) {
                Ok(()) => {
                    return Ok(Self {
                        running: Running::Child { _guard: g },
                        _key_line: None,
                        kind: ServerKind::ProFtpd,
                        port,
                        fingerprint,
                        client_key,
                        username: KEY_USER.into(),
                        remote_root: "/data".into(),
                        data_root: data,
                        log,
                        _dir: Some(dir),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn shell_instance(prefix: &str) -> Result<(tempfile::TempDir, PathBuf, String, KeyLine)> {
        ensure_shell_user()?;
        let dir = instance_dir(prefix)?;
        let data = dir.path().join("data");
        fs::create_dir_all(&data)?;
        chown(SHELL_USER, &data)?;
        let (client_key, client_pub) = Self::client_key(dir.path())?;
        let line = KeyLine::add(client_pub)?;
        Ok((dir, data, client_key, line))
    }

    fn dropbear() -> Result<Self> {
        need("/usr/sbin/dropbear", "dropbear-bin")?;
        need(SFTP_SERVER, "openssh-sftp-server")?;
        let (dir, data, client_key, key_line) = Self::shell_instance("dropbear-")?;
        let d = dir.path();
        let hk = d.join("host_key");
        run(Command::new("dropbearkey")
            .args(["-t", "ed25519", "-f"])
            .arg(&hk))?;
        let printed = run(Command::new("dropbearkey").args(["-y", "-f"]).arg(&hk))?;
        let line = printed
            .lines()
            .find(|l| l.starts_with("ssh-ed25519 "))
            .ok_or_else(|| anyhow!("dropbearkey -y printed no public key: {printed}"))?;
        let fingerprint = fingerprint_of_line(d, line)?;
        let log = d.join("dropbear.log");
        let mut last = anyhow!("not started");
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new("/usr/sbin/dropbear");
            // -s no passwords, -w no root, -j -k no forwarding; the SFTP
            // subsystem is /usr/lib/sftp-server (OpenSSH's), built in.
            cmd.args(["-F", "-E", "-s", "-w", "-j", "-k", "-m", "-p"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("-r")
                .arg(&hk)
                .arg("-P")
                .arg(d.join("dropbear.pid"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?);
            let mut g = ChildGuard::spawn("dropbear", cmd)?;
            match wait_banner(Some(&mut g), port, &log) {
                Ok(()) => {
                    return Ok(Self {
                        running: Running::Child { _guard: g },
                        _key_line: Some(key_line),
                        kind: ServerKind::Dropbear,
                        port,
                        fingerprint,
                        client_key,
                        username: SHELL_USER.into(),
                        remote_root: data.display().to_string(),
                        data_root: data,
                        log,
                        _dir: Some(dir),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn tinysshd() -> Result<Self> {
        need("/usr/sbin/tinysshd", "tinysshd")?;
        need(SFTP_SERVER, "openssh-sftp-server")?;
        let (dir, data, client_key, key_line) = Self::shell_instance("tinysshd-")?;
        let d = dir.path();
        let keydir = d.join("keys");
        run(Command::new("/usr/sbin/tinysshd-makekey").arg(&keydir))?;
        let printed = run(Command::new("/usr/sbin/tinysshd-printkey").arg(&keydir))?;
        let line = printed
            .lines()
            .find(|l| l.starts_with("ssh-ed25519 "))
            .ok_or_else(|| anyhow!("tinysshd-printkey printed no ed25519 key: {printed}"))?;
        let fingerprint = fingerprint_of_line(d, line)?;
        let log = d.join("tinysshd.log");
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let cmd = vec![
            "/usr/sbin/tinysshd".to_owned(),
            "-v".to_owned(),
            "-x".to_owned(),
            format!("sftp={SFTP_SERVER}"),
            keydir.display().to_string(),
        ];
        let acceptor = AcceptLoop::start(listener, cmd, log.clone())?;
        wait_banner(None, port, &log)?;
        Ok(Self {
            running: Running::PerConnection {
                _acceptor: acceptor,
            },
            _key_line: Some(key_line),
            kind: ServerKind::Tinysshd,
            port,
            fingerprint,
            client_key,
            username: SHELL_USER.into(),
            remote_root: data.display().to_string(),
            data_root: data,
            log,
            _dir: Some(dir),
        })
    }

    fn python(kind: ServerKind, name: &str, script: &str) -> Result<Self> {
        let python = servers_python();
        if !python.exists() {
            bail!(
                "{} is missing: tests/lib/prereqs.sh makes the venv with asyncssh and paramiko",
                python.display()
            );
        }
        let dir = instance_dir("pysftp-")?;
        let d = dir.path();
        let chroot = d.join("chroot");
        let data = chroot.join("data");
        fs::create_dir_all(&data)?;
        let (client_key, client_pub) = Self::client_key(d)?;
        fs::write(d.join("authorized_keys"), client_pub)?;
        ssh_keygen(&d.join("host_key"), &["-t", "ed25519"])?;
        let fingerprint = fingerprint_of_line(d, &fs::read_to_string(d.join("host_key.pub"))?)?;
        let script_path = d.join(name);
        fs::write(&script_path, script)?;
        let log = d.join("server.log");
        let mut last = anyhow!("not started");
        for _ in 0..5 {
            let port = free_port()?;
            let mut cmd = Command::new(&python);
            cmd.arg(&script_path)
                .arg(d.join("host_key"))
                .arg(d.join("authorized_keys"))
                .arg(&chroot)
                .arg(port.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?);
            let mut g = ChildGuard::spawn(name.to_owned(), cmd)?;
            match wait_banner(Some(&mut g), port, &log) {
                Ok(()) => {
                    return Ok(Self {
                        running: Running::Child { _guard: g },
                        _key_line: None,
                        kind,
                        port,
                        fingerprint,
                        client_key,
                        username: KEY_USER.into(),
                        remote_root: "/data".into(),
                        data_root: data,
                        log,
                        _dir: Some(dir),
                    });
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `SHA256:...` of the server's host key.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The SFTP path routes of this server are relative to.
    pub fn remote_root(&self) -> &str {
        &self.remote_root
    }

    /// The local directory behind [`Self::remote_root`].
    pub fn data_root(&self) -> &Path {
        &self.data_root
    }

    /// The SFTP secret of the shared contract (key auth, the pin).
    pub fn sftp_secret_json(&self) -> String {
        serde_json::json!({
            "host": "127.0.0.1",
            "port": self.port,
            "username": self.username,
            "host_key_sha256": [self.fingerprint],
            "private_key": self.client_key,
            "passphrase": null,
            "password": null,
        })
        .to_string()
    }

    /// The server's log so far, for failure messages.
    pub fn log(&self) -> String {
        match &self.running {
            Running::OpenSsh(s) => s.log(),
            _ => fs::read_to_string(&self.log).unwrap_or_default(),
        }
    }
}

fn proftpd_conf(d: &Path, port: u16) -> String {
    let d = d.display();
    format!(
        "# Generated by xecm-stack for one interop test instance.
ServerType standalone
ServerName \"xecm interop\"
DefaultServer on
DefaultAddress 127.0.0.1
SocketBindTight on
UseIPv6 off
Port {port}
User {KEY_USER}
Group {KEY_USER}
PidFile {d}/proftpd.pid
ScoreboardFile {d}/proftpd.scoreboard
DelayTable none
WtmpLog off
UseReverseDNS off
UseFtpUsers off
RequireValidShell off
AuthOrder mod_auth_unix.c
DefaultRoot {d}/chroot
AllowOverwrite on
MaxInstances 100
ModulePath /usr/lib/proftpd
LoadModule mod_sftp.c
SFTPEngine on
SFTPLog {d}/sftp.log
SFTPHostKey {d}/host_key
SFTPAuthorizedUserKeys file:{d}/authorized_keys/%u
SFTPAuthMethods publickey
"
    )
}
