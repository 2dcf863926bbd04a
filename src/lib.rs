//! mctl: a systemd-integrated machine manager.
//!
//! The launcher boots an init (or runs a command) in namespaces, cgroups and a private root;
//! the CLI drives it. See `README.md` for the overall shape.

#![warn(missing_docs)]

pub mod bus;
pub mod cgroups;
pub mod cli;
pub mod container;
pub mod daemon;
pub mod entry;
pub mod guestfs;
pub mod hostdb;
pub mod images;
pub mod launcher;
pub mod logging;
pub mod manager;
pub mod names;
pub mod network;
pub mod osrelease;
pub mod procfs;
pub mod runtime;
pub mod seccomp;
pub mod session;
pub mod settings;
pub mod signals;
pub mod sys;
pub mod userns;
