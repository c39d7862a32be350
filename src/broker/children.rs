//! The programs `s3drop exec` started with the broker: each is registered by the process
//! that asked (its pid from `SO_PEERCRED`, which `exec(2)` keeps for the command) with a
//! random token, and fetches its sessions from the loopback endpoint ([`super::endpoint`])
//! with it, as every AWS SDK does from `AWS_CONTAINER_CREDENTIALS_FULL_URI`. A pidfd says
//! when the process is gone: from then on the token opens nothing. `--max-duration` ends a
//! registration earlier.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tokio::io::unix::AsyncFd;
use tokio_util::sync::CancellationToken;

use crate::auth::Reach;
use crate::events::{Event, ExecEnded, ExecRegistered};

/// Programs registered at once at most; more are refused (each is a live process of a
/// member of the group, so this bounds what one of them can make the daemon hold).
pub const MAX_CHILDREN: usize = 1024;

/// One registered program.
pub struct Child {
    /// Hex of 32 random bytes.
    token: String,
    pub reach: Reach,
    pub scope: String,
    pub uid: u32,
    pub pid: i32,
    pub since: SystemTime,
    /// Readable once the process has exited.
    pidfd: OwnedFd,
}

impl Child {
    fn alive(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.pidfd,
            rustix::event::PollFlags::IN,
        )];
        matches!(
            rustix::event::poll(&mut fds, Some(&rustix::event::Timespec::default())),
            Ok(0)
        )
    }
}

/// A registered program as `status` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listed {
    pub scope: String,
    pub uid: u32,
    pub pid: i32,
    pub since: String,
}

/// Every registered program.
#[derive(Default)]
pub struct Children {
    children: Mutex<Vec<Arc<Child>>>,
}

impl Children {
    /// Registers the process `pid` (of `uid`) for `reach` (described as `scope`) until it
    /// exits, `max` passes or `cancel`; its token.
    pub fn register(
        self: &Arc<Self>,
        reach: Reach,
        scope: String,
        uid: u32,
        pid: i32,
        max: Option<Duration>,
        cancel: &CancellationToken,
    ) -> Result<String, String> {
        let raw = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| "the asking process has no pid".to_string())?;
        let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
            .map_err(|e| format!("cannot watch the asking process {pid}: {e}"))?;
        let watched = pidfd
            .try_clone()
            .map_err(|e| format!("cannot watch the asking process {pid}: {e}"))?;
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no random token: {e}"))?;
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let child = Arc::new(Child {
            token: token.clone(),
            reach,
            scope,
            uid,
            pid,
            since: SystemTime::now(),
            pidfd,
        });
        {
            let mut children = self.children.lock().expect("children lock");
            children.retain(|c| c.alive());
            if children.len() >= MAX_CHILDREN {
                return Err(format!(
                    "{MAX_CHILDREN} programs are registered already; try again when one ends"
                ));
            }
            children.push(child.clone());
            crate::metrics::get()
                .broker_children
                .set(children.len() as i64);
        }
        ExecRegistered {
            uid,
            pid,
            scope: &child.scope,
            max,
        }
        .emit();
        let (children, cancel) = (self.clone(), cancel.clone());
        tokio::spawn(async move {
            let exited = async {
                // SAFETY: the AsyncFd owns the descriptor for its whole life.
                let registered = unsafe {
                    AsyncFd::register_with_interest(watched, tokio::io::Interest::READABLE)
                };
                match registered {
                    Ok(fd) => {
                        let _ = fd.readable().await;
                    }
                    // Cannot be watched: the request-time check still ends it.
                    Err(_) => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                _ = exited => "exited",
                _ = sleep_or_forever(max) => "max_duration",
                _ = cancel.cancelled() => "the daemon stopped",
            };
            children.forget(&child, why);
        });
        Ok(token)
    }

    fn forget(&self, child: &Arc<Child>, why: &str) {
        let mut children = self.children.lock().expect("children lock");
        let before = children.len();
        children.retain(|c| !Arc::ptr_eq(c, child));
        crate::metrics::get()
            .broker_children
            .set(children.len() as i64);
        if children.len() < before {
            ExecEnded {
                uid: child.uid,
                pid: child.pid,
                scope: &child.scope,
                why,
            }
            .emit();
        }
    }

    /// The live program whose token `presented` is (compared in constant time with each).
    pub fn find(&self, presented: &[u8]) -> Option<Arc<Child>> {
        let children = self.children.lock().expect("children lock");
        let mut found = None;
        for child in children.iter() {
            if bool::from(child.token.as_bytes().ct_eq(presented)) {
                found = Some(child.clone());
            }
        }
        found.filter(|c| c.alive())
    }

    pub fn list(&self) -> Vec<Listed> {
        self.children
            .lock()
            .expect("children lock")
            .iter()
            .filter(|c| c.alive())
            .map(|c| Listed {
                scope: c.scope.clone(),
                uid: c.uid,
                pid: c.pid,
                since: crate::message::rfc3339(c.since),
            })
            .collect()
    }
}

async fn sleep_or_forever(max: Option<Duration>) {
    match max {
        Some(max) => tokio::time::sleep(max).await,
        None => std::future::pending().await,
    }
}
