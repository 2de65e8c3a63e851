//! A real OpenSSH `sshd` for tests, the demo and the benchmark.
//!
//! Each [`Sshd`] is its own `sshd -D` process on 127.0.0.1 and a free port,
//! with a freshly generated host key and client keys in its own directory.
//! Tests may start one each (≈ 0.1 s); instances share nothing but the
//! system accounts below. Dropping the guard kills sshd and every process it
//! forked (per-connection children), also when a test panics.
//!
//! Accounts and layout (we run as root; sshd needs real accounts):
//! - `xecm-sftp`: key authentication only. `xecm-sftp-pw`: password
//!   authentication only (a `Match User` block), for the password test.
//!   Both are system accounts with `nologin` shells, created with `useradd`
//!   if missing, and forced into `internal-sftp`: no shell, no forwarding.
//! - `ChrootDirectory` must be root-owned all the way up and not writable by
//!   others, which rules out `/tmp`; instance dirs live under
//!   `/var/lib/xecm-stack/sshd-XXXX/` (root, 0755), with
//!   `chroot/` (root, 0755) and `chroot/data/` (owned by `xecm-sftp`): the
//!   SFTP root is `/data`, locally `data_root()`.
//! - The password of `xecm-sftp-pw` is random, made once per boot and kept
//!   in `/run/xecm-stack/sftp-pw.secret` (0600), so parallel test processes
//!   agree on it; a file lock serialises account set-up across processes.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

pub const KEY_USER: &str = "xecm-sftp";
pub const PASSWORD_USER: &str = "xecm-sftp-pw";
/// The SFTP path of the writable data root inside the chroot.
pub const REMOTE_ROOT: &str = "/data";
/// Passphrase of the passphrase-protected client key (test-only key).
pub const KEY_PASSPHRASE: &str = "correct horse battery staple";

const STATE_DIR: &str = "/var/lib/xecm-stack";
const RUN_DIR: &str = "/run/xecm-stack";
const SSHD: &str = "/usr/sbin/sshd";

/// Serialises account set-up between threads of this process (the file
/// lock does it between processes).
static SETUP: Mutex<()> = Mutex::new(());

/// Options for [`Sshd::start_with`].
#[derive(Debug, Clone, Default)]
pub struct SshdOptions {
    /// Also generate an RSA key in legacy PEM format (slower to generate).
    pub rsa_pem_key: bool,
    /// sshd `LogLevel`; default `VERBOSE`. `DEBUG3` shows the negotiated
    /// algorithms and strict KEX, but also logs every SFTP request (slow).
    pub log_level: Option<&'static str>,
}

/// A running sshd; killed with its children on drop.
pub struct Sshd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
    host_key_fingerprint: String,
    client_key: String,
    client_key_encrypted: String,
    client_key_rsa_pem: Option<String>,
    password: String,
}

impl std::fmt::Debug for Sshd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sshd")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
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

fn user_exists(user: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(user)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// Creates the two accounts if missing and returns the password of the
/// password account.
fn ensure_accounts() -> Result<String> {
    let _g = SETUP.lock().unwrap_or_else(|p| p.into_inner());
    fs::create_dir_all(RUN_DIR).with_context(|| format!("creating {RUN_DIR}"))?;
    let lock = fs::File::create(Path::new(RUN_DIR).join("setup.lock"))?;
    lock.lock().context("locking account set-up")?;

    for user in [KEY_USER, PASSWORD_USER] {
        if !user_exists(user) {
            run(Command::new("useradd")
                .args(["--system", "--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin", "--user-group", user]))?;
        }
    }
    // `useradd` leaves the password field as `!`, which sshd treats as a
    // locked account even for key auth; `*` means "no password" instead.
    run(Command::new("usermod").args(["-p", "*", KEY_USER]))?;

    let secret = Path::new(RUN_DIR).join("sftp-pw.secret");
    let password = match fs::read_to_string(&secret) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => {
            let p = random_hex(18)?;
            let mut child = Command::new("chpasswd")
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawning chpasswd")?;
            child
                .stdin
                .take()
                .ok_or_else(|| anyhow!("chpasswd stdin"))?
                .write_all(format!("{PASSWORD_USER}:{p}\n").as_bytes())?;
            let out = child.wait_with_output()?;
            if !out.status.success() {
                bail!("chpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&secret)?;
            f.write_all(p.as_bytes())?;
            p
        }
    };
    Ok(password)
}

use std::os::unix::fs::OpenOptionsExt;

fn keygen(dir: &Path, name: &str, args: &[&str], passphrase: &str) -> Result<String> {
    let path = dir.join(name);
    run(Command::new("ssh-keygen")
        .args(["-q", "-C", "xecm-test", "-N", passphrase, "-f"])
        .arg(&path)
        .args(args))?;
    fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn fingerprint(pub_key: &Path) -> Result<String> {
    let out = run(Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(pub_key))?;
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
fn wait_ready(child: &mut Child, port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    loop {
        if let Some(status) = child.try_wait()? {
            bail!(
                "sshd exited ({status}): {}",
                fs::read_to_string(log).unwrap_or_default().trim()
            );
        }
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            let mut banner = [0u8; 7];
            if s.read_exact(&mut banner).is_ok() && &banner == b"SSH-2.0" {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("sshd did not come up on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Sshd {
    pub fn start() -> Result<Self> {
        Self::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> Result<Self> {
        if !Path::new(SSHD).exists() {
            bail!(
                "{SSHD} is missing: apt-get -o DPkg::Lock::Timeout=120 install -y openssh-server"
            );
        }
        let password = ensure_accounts()?;
        // sshd's privilege-separation directory.
        fs::create_dir_all("/run/sshd")?;
        fs::create_dir_all(STATE_DIR)?;
        fs::set_permissions(STATE_DIR, fs::Permissions::from_mode(0o755))?;
        let dir = tempfile::Builder::new()
            .prefix("sshd-")
            .tempdir_in(STATE_DIR)?;
        let d = dir.path();
        // sshd reads authorized_keys as the user, so the dir must be
        // traversable; private keys inside are 0600 (ssh-keygen's default).
        fs::set_permissions(d, fs::Permissions::from_mode(0o755))?;
        let chroot = d.join("chroot");
        let data = chroot.join("data");
        fs::create_dir_all(&data)?;
        fs::set_permissions(&chroot, fs::Permissions::from_mode(0o755))?;
        run(Command::new("chown")
            .arg(format!("{KEY_USER}:{KEY_USER}"))
            .arg(&data))?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755))?;

        keygen(d, "host_key", &["-t", "ed25519"], "")?;
        let host_key_fingerprint = fingerprint(&d.join("host_key.pub"))?;
        let client_key = keygen(d, "client_key", &["-t", "ed25519"], "")?;
        let client_key_encrypted = keygen(d, "client_key_enc", &["-t", "ed25519"], KEY_PASSPHRASE)?;
        let client_key_rsa_pem = if opts.rsa_pem_key {
            Some(keygen(
                d,
                "client_key_rsa",
                &["-t", "rsa", "-b", "2048", "-m", "PEM"],
                "",
            )?)
        } else {
            None
        };
        let ak = d.join("authorized_keys");
        fs::create_dir_all(&ak)?;
        let mut keys = String::new();
        for k in ["client_key", "client_key_enc", "client_key_rsa"] {
            if let Ok(p) = fs::read_to_string(d.join(format!("{k}.pub"))) {
                keys.push_str(&p);
            }
        }
        fs::write(ak.join(KEY_USER), keys)?;

        let mut last_err = anyhow!("not started");
        for _ in 0..5 {
            // The port can be taken between probing and binding; retry.
            let port = free_port()?;
            let config = d.join("sshd_config");
            fs::write(
                &config,
                sshd_config(d, port, opts.log_level.unwrap_or("VERBOSE")),
            )?;
            let log = d.join("sshd.log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(fs::File::create(&log)?)
                .spawn()
                .context("spawning sshd")?;
            match wait_ready(&mut child, port, &log) {
                Ok(()) => {
                    return Ok(Self {
                        child: Some(child),
                        dir,
                        port,
                        host_key_fingerprint,
                        client_key,
                        client_key_encrypted,
                        client_key_rsa_pem,
                        password,
                    });
                }
                Err(e) => {
                    kill_tree(&mut child);
                    last_err = e;
                }
            }
        }
        Err(last_err.context("starting sshd"))
    }

    /// Process id of the sshd listener (while running).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Local filesystem path of the SFTP data root (`/data` over SFTP).
    pub fn data_root(&self) -> PathBuf {
        self.dir.path().join("chroot").join("data")
    }

    /// The SFTP path of the data root.
    pub fn remote_root(&self) -> &str {
        REMOTE_ROOT
    }

    pub fn username(&self) -> &str {
        KEY_USER
    }

    /// The unencrypted ed25519 client key (OpenSSH PEM text).
    pub fn client_private_key(&self) -> &str {
        &self.client_key
    }

    /// Path of the unencrypted client key file (for the `sftp` CLI).
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    /// The ed25519 client key protected by [`KEY_PASSPHRASE`].
    pub fn encrypted_client_key(&self) -> &str {
        &self.client_key_encrypted
    }

    /// An RSA key in legacy PEM format, if requested in the options.
    pub fn rsa_pem_client_key(&self) -> Option<&str> {
        self.client_key_rsa_pem.as_deref()
    }

    pub fn password_user(&self) -> &str {
        PASSWORD_USER
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// `SHA256:...` fingerprint of the host key, as `ssh-keygen -l` prints.
    pub fn host_key_fingerprint(&self) -> &str {
        &self.host_key_fingerprint
    }

    /// A `known_hosts` line for OpenSSH clients (the benchmark's `sftp`).
    pub fn known_hosts_line(&self) -> Result<String> {
        let pubkey = fs::read_to_string(self.dir.path().join("host_key.pub"))?;
        let mut parts = pubkey.split_whitespace();
        let (t, k) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        Ok(format!("[127.0.0.1]:{} {t} {k}\n", self.port))
    }

    /// The SFTP secret of the shared contract, key auth.
    pub fn sftp_secret_json(&self) -> String {
        serde_json::json!({
            "host": self.host(),
            "port": self.port,
            "username": KEY_USER,
            "host_key_sha256": [self.host_key_fingerprint],
            "private_key": self.client_key,
            "passphrase": null,
            "password": null,
        })
        .to_string()
    }

    /// The SFTP secret for the password account.
    pub fn password_secret_json(&self) -> String {
        serde_json::json!({
            "host": self.host(),
            "port": self.port,
            "username": PASSWORD_USER,
            "host_key_sha256": [self.host_key_fingerprint],
            "private_key": null,
            "passphrase": null,
            "password": self.password,
        })
        .to_string()
    }

    /// sshd's log so far (stderr, `-e`), for test failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// Kills the per-connection sshd processes but keeps the listener, as if
    /// the network dropped every open session (e.g. across a Lambda freeze).
    pub fn kill_connections(&self) {
        if let Some(c) = &self.child {
            let kids = descendants(c.id());
            if !kids.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(kids.iter().map(u32::to_string))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }

    /// The most recently opened connection's sshd process (latest start
    /// time, field 22 of /proc/PID/stat, then highest pid: pids may wrap,
    /// start times do not go back).
    fn newest_connection(&self) -> Option<u32> {
        let c = self.child.as_ref()?;
        let started = |pid: u32| {
            fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|st| {
                    let rest = st.rsplit_once(')')?.1.to_owned();
                    rest.split_whitespace().nth(19)?.parse::<u64>().ok()
                })
                .unwrap_or(0)
        };
        children(c.id())
            .into_iter()
            .max_by_key(|&pid| (started(pid), pid))
    }

    /// Whether the most recently opened connection (its sshd or sftp-server
    /// processes) holds a file whose path contains `needle` open: a test
    /// that kills a connection mid-transfer waits for this, since a session
    /// that authenticated has not necessarily opened its file yet.
    pub fn newest_connection_has_open(&self, needle: &str) -> bool {
        let Some(newest) = self.newest_connection() else {
            return false;
        };
        let mut pids = descendants(newest);
        pids.push(newest);
        pids.iter().any(|pid| {
            fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|fds| {
                    fds.flatten().any(|fd| {
                        fs::read_link(fd.path())
                            .is_ok_and(|target| target.to_string_lossy().contains(needle))
                    })
                })
                .unwrap_or(false)
        })
    }

    /// Kills the most recently opened connection's sshd processes only, as
    /// if that one session dropped while the others carry on. Returns
    /// whether there was one (some of its processes may already be gone,
    /// so `kill`'s own status says nothing more).
    pub fn kill_newest_connection(&self) -> bool {
        let Some(newest) = self.newest_connection() else {
            return false;
        };
        let mut pids = descendants(newest);
        pids.push(newest);
        Command::new("kill")
            .arg("-KILL")
            .args(pids.iter().map(u32::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    /// Stops sshd and its children now (drop does the same).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill_tree(&mut c);
        }
    }
}

impl Sshd {
    /// Creates the shared test accounts (`xecm-sftp`, `xecm-sftp-pw`) if
    /// missing, for other servers that log in the same account (the
    /// interop suite's ProFTPD); returns the password account's password.
    pub fn ensure_accounts_for_others() -> Result<String> {
        ensure_accounts()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn sshd_config(dir: &Path, port: u16, log_level: &str) -> String {
    let d = dir.display();
    format!(
        "# Generated by xecm-stack for one test instance.
ListenAddress 127.0.0.1
Port {port}
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys/%u
# Keys live in a temp dir that sshd's owner checks would refuse.
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers {KEY_USER} {PASSWORD_USER}
AllowTcpForwarding no
AllowAgentForwarding no
X11Forwarding no
PermitTunnel no
LogLevel {log_level}
Subsystem sftp internal-sftp
# Many parallel sessions in the pool tests.
MaxStartups 100:30:200
MaxSessions 50

Match User {KEY_USER},{PASSWORD_USER}
    ChrootDirectory {d}/chroot
    ForceCommand internal-sftp

Match User {PASSWORD_USER}
    PasswordAuthentication yes
"
    )
}

/// (pid, parent pid) of every process (from /proc).
fn parents() -> Vec<(u32, u32)> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            // Field 4 of /proc/PID/stat is the parent pid; the command name
            // (field 2) is in parentheses and may contain spaces.
            if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat"))
                && let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r)
                && let Some(ppid) = rest.split_whitespace().nth(1).and_then(|x| x.parse().ok())
            {
                parent_of.push((p, ppid));
            }
        }
    }
    parent_of
}

/// Process ids of the direct children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    parents()
        .into_iter()
        .filter(|&(_, pp)| pp == pid)
        .map(|(p, _)| p)
        .collect()
}

/// Process ids of all descendants of `pid`.
fn descendants(pid: u32) -> Vec<u32> {
    let parent_of = parents();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(cur) = frontier.pop() {
        for (p, pp) in &parent_of {
            if *pp == cur && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    out
}

/// Kills sshd and the per-connection processes it forked (which would
/// otherwise outlive it while a client holds a connection).
fn kill_tree(child: &mut Child) {
    let kids = descendants(child.id());
    let _ = child.kill();
    if !kids.is_empty() {
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(kids.iter().map(u32::to_string))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let _ = child.wait();
}
