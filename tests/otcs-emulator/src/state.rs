//! Shared server state: the model behind one lock (persisted after every
//! change when a data directory is given), tickets, injected faults and the
//! callback queue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::callback::CallbackSender;
use crate::content::ContentStore;
use crate::error::{ApiError, Error};
use crate::model::{Approval, Model};
use crate::seed::Seed;

struct Ticket {
    user_id: i64,
    last_used: Instant,
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Fault {
    /// The status to answer with; 0 lets the request through (after the
    /// delay), which makes a fault that only slows a call down.
    #[serde(default)]
    pub status: u16,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub path_prefix: String,
    /// Only requests whose path also contains this.
    #[serde(default)]
    pub path_contains: String,
    /// Milliseconds to wait before answering (or passing the request on).
    /// A client that hangs up meanwhile cancels the request unprocessed.
    #[serde(default)]
    pub delay_ms: u64,
}

/// What an injected fault does to one request.
#[derive(Debug, Clone, Copy)]
pub struct FaultAction {
    pub status: u16,
    pub delay_ms: u64,
}

fn one() -> u32 {
    1
}

pub struct AppState {
    model: Mutex<Model>,
    pub content: ContentStore,
    state_file: Option<PathBuf>,
    tickets: Mutex<HashMap<String, Ticket>>,
    ticket_idle: Duration,
    faults: Mutex<Vec<Fault>>,
    callbacks: Option<CallbackSender>,
    pub test_controls: bool,
}

/// A poisoned lock only means a handler panicked mid-request; the data is
/// still the last consistent state we wrote, so keep serving.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl AppState {
    pub fn open(
        seed: Seed,
        data_dir: Option<PathBuf>,
        ticket_idle: Duration,
        callbacks: Option<CallbackSender>,
        test_controls: bool,
    ) -> Result<AppState, Error> {
        let content = ContentStore::open(data_dir.as_deref())?;
        let state_file = data_dir.as_ref().map(|d| d.join("state.json"));
        let model = match &state_file {
            Some(path) if path.exists() => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::State {
                    path: path.clone(),
                    source,
                })?;
                serde_json::from_str(&text).map_err(|source| Error::StateFormat {
                    path: path.clone(),
                    source,
                })?
            }
            _ => Model::from_seed(seed).map_err(Error::Seed)?,
        };
        let state = AppState {
            model: Mutex::new(model),
            content,
            state_file,
            tickets: Mutex::new(HashMap::new()),
            ticket_idle,
            faults: Mutex::new(Vec::new()),
            callbacks,
            test_controls,
        };
        {
            let m = lock(&state.model);
            state.save(&m).map_err(|e| Error::Seed(e.message))?;
        }
        Ok(state)
    }

    pub fn read<T>(&self, f: impl FnOnce(&Model) -> T) -> T {
        f(&lock(&self.model))
    }

    /// Runs a change; on success persists the model before answering, so an
    /// acknowledged change survives a restart.
    pub fn mutate<T>(
        &self,
        f: impl FnOnce(&mut Model) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut m = lock(&self.model);
        let out = f(&mut m)?;
        self.save(&m)?;
        Ok(out)
    }

    fn save(&self, m: &Model) -> Result<(), ApiError> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let fail = |e: String| ApiError::internal(format!("Cannot persist state: {e}"));
        let text = serde_json::to_vec(m).map_err(|e| fail(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| fail(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| fail(e.to_string()))
    }

    pub fn login(&self, username: &str, password: &str) -> Option<String> {
        let user = self.read(|m| {
            m.seed
                .users
                .iter()
                .find(|u| u.name == username && u.password == password)
                .map(|u| u.id)
        })?;
        let ticket: String = std::iter::repeat_with(fastrand::alphanumeric)
            .take(48)
            .collect();
        lock(&self.tickets).insert(
            ticket.clone(),
            Ticket {
                user_id: user,
                last_used: Instant::now(),
            },
        );
        Some(ticket)
    }

    /// The user of a live ticket; refreshes its idle timer.
    pub fn check_ticket(&self, ticket: &str) -> Option<i64> {
        let mut tickets = lock(&self.tickets);
        let now = Instant::now();
        let idle = self.ticket_idle;
        tickets.retain(|_, t| now.duration_since(t.last_used) < idle);
        let t = tickets.get_mut(ticket)?;
        t.last_used = now;
        Some(t.user_id)
    }

    /// Changes a user's password (test control: a credential rotation).
    pub fn set_password(&self, username: &str, password: &str) -> Result<(), ApiError> {
        self.mutate(|m| {
            let user = m
                .seed
                .users
                .iter_mut()
                .find(|u| u.name == username)
                .ok_or_else(|| ApiError::not_found(format!("No user '{username}'.")))?;
            user.password = password.to_string();
            Ok(())
        })
    }

    pub fn expire_tickets(&self) {
        lock(&self.tickets).clear();
    }

    pub fn add_fault(&self, fault: Fault) {
        lock(&self.faults).push(fault);
    }

    /// The status of an injected fault matching this path, consuming it.
    pub fn take_fault(&self, path: &str) -> Option<FaultAction> {
        let mut faults = lock(&self.faults);
        let pos = faults.iter().position(|f| {
            f.count > 0 && path.starts_with(&f.path_prefix) && path.contains(&f.path_contains)
        })?;
        let f = &mut faults[pos];
        f.count -= 1;
        let action = FaultAction {
            status: f.status,
            delay_ms: f.delay_ms,
        };
        if f.count == 0 {
            faults.remove(pos);
        }
        Some(action)
    }

    pub fn notify(&self, approval: Option<Approval>) {
        if let (Some(a), Some(tx)) = (approval, &self.callbacks) {
            tx.send(a);
        }
    }
}
