//! What mctld takes from the bus before doing any work: method calls of a bounded size, and a
//! bounded number of calls in flight per connection and in all. Beyond that a call is refused
//! at once rather than queued, so that no caller can make mctld hold an unbounded amount of
//! memory or work.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest method call accepted, in bytes (header and arguments).
    pub max_message: usize,
    /// Calls one connection may have in flight.
    pub per_sender: usize,
    /// Calls all connections together may have in flight.
    pub total: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // machine1's arguments are names (at most 64 bytes), a root directory (a path, at most
        // 4096) and a few interface indices: 16 KiB is ample. Clients (machinectl, mctl) make
        // one call at a time per connection.
        Self { max_message: 16 * 1024, per_sender: 16, total: 1024 }
    }
}

/// Why a call was refused before it was looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The message is larger than any valid call.
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// The connection has too many calls in flight.
    SenderBusy {
        /// The bound.
        limit: usize,
    },
    /// mctld has too many calls in flight.
    Busy {
        /// The bound.
        limit: usize,
    },
}

impl Refusal {
    /// The D-Bus error name.
    pub fn error_name(&self) -> &'static str {
        match self {
            Refusal::TooLarge { .. } => "org.freedesktop.DBus.Error.InvalidArgs",
            Refusal::SenderBusy { .. } | Refusal::Busy { .. } => "org.freedesktop.DBus.Error.LimitsExceeded",
        }
    }

    /// The error message.
    pub fn message(&self) -> String {
        match self {
            Refusal::TooLarge { size, limit } => {
                format!("Invalid arguments: call of {size} bytes, at most {limit} accepted")
            }
            Refusal::SenderBusy { limit } => {
                format!("Too many calls in flight on this connection (at most {limit}); wait for replies")
            }
            Refusal::Busy { limit } => format!("Too many calls in flight (at most {limit}); try again later"),
        }
    }
}

#[derive(Debug, Default)]
struct Sender {
    in_flight: usize,
}

#[derive(Debug, Default)]
struct Table {
    senders: HashMap<String, Sender>,
    total: usize,
}

/// The calls in flight, by connection.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    table: Mutex<Table>,
}

/// A call's place in flight; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    sender: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut t = self.admission.lock();
        t.total -= 1;
        if let Some(s) = t.senders.get_mut(&self.sender) {
            s.in_flight -= 1;
            if s.in_flight == 0 {
                t.senders.remove(&self.sender);
            }
        }
    }
}

impl Admission {
    /// An empty table with `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, table: Mutex::default() })
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a call of `size` bytes from `sender`, or says why not.
    pub fn admit(self: &Arc<Self>, sender: &str, size: usize) -> Result<Ticket, Refusal> {
        let l = self.limits;
        if size > l.max_message {
            return Err(Refusal::TooLarge { size, limit: l.max_message });
        }
        let mut t = self.lock();
        if t.total >= l.total {
            return Err(Refusal::Busy { limit: l.total });
        }
        let s = t.senders.entry(sender.to_owned()).or_default();
        if s.in_flight >= l.per_sender {
            return Err(Refusal::SenderBusy { limit: l.per_sender });
        }
        s.in_flight += 1;
        t.total += 1;
        Ok(Ticket { admission: self.clone(), sender: sender.to_owned() })
    }

    /// Calls in flight.
    pub fn in_flight(&self) -> usize {
        self.lock().total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_bounded_by_size_per_sender_and_in_all() {
        let a = Admission::new(Limits { max_message: 100, per_sender: 2, total: 3 });
        assert_eq!(a.admit(":1.1", 101).unwrap_err(), Refusal::TooLarge { size: 101, limit: 100 });
        let t1 = a.admit(":1.1", 100).unwrap();
        let t2 = a.admit(":1.1", 10).unwrap();
        assert_eq!(a.admit(":1.1", 10).unwrap_err(), Refusal::SenderBusy { limit: 2 });
        // Another connection still gets in, up to the total.
        let t3 = a.admit(":1.2", 10).unwrap();
        assert_eq!(a.admit(":1.3", 10).unwrap_err(), Refusal::Busy { limit: 3 });
        assert_eq!(a.in_flight(), 3);
        drop(t1);
        let t4 = a.admit(":1.1", 10).unwrap();
        drop((t2, t3, t4));
        assert_eq!(a.in_flight(), 0);
        assert_eq!(Refusal::Busy { limit: 1 }.error_name(), "org.freedesktop.DBus.Error.LimitsExceeded");
        assert_eq!(
            Refusal::TooLarge { size: 2, limit: 1 }.error_name(),
            "org.freedesktop.DBus.Error.InvalidArgs"
        );
    }
}
