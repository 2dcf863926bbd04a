//! D-Bus adapters: the machine1 service mctld offers and the client proxies the CLI and the
//! launcher use. Thin over [`crate::manager`]; no domain logic lives here.

mod calls;
pub mod client;
pub mod introspect;
pub mod limits;
pub mod paths;
pub mod proxy;
pub mod service;
pub mod systemd;

/// mctld's own well-known name.
pub const OWN_NAME: &str = "org.mctl.Machine1";
/// systemd-machined's name, taken as well with `--machined-compat`.
pub const COMPAT_NAME: &str = "org.freedesktop.machine1";
