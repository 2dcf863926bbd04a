//! The image store: directory trees under one root (default `/var/lib/machines`), and the ways
//! images get in and out of it: tarball import and export, downloads (`pull-tar`, LXC image
//! servers), bootstrap recipes and copies.
//!
//! Every tree is written through [`confined::TreeWriter`], which resolves paths with the
//! kernel's help (openat2 with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) so that no entry can
//! create or change anything outside the tree it builds. New images are built in a hidden
//! temporary directory of the store (`.#import-…`) and renamed into place only when whole;
//! [`interrupt`] makes sure a signal leaves no temporary behind.
//!
//! The API is plain Rust types so that a D-Bus adapter can sit on top of it.

pub mod bootstrap;
pub mod compress;
pub mod confined;
pub mod disk;
pub mod http;
pub mod interrupt;
pub mod lxc;
pub mod oci;
pub mod pull;
pub mod shift;
pub mod store;
pub mod tar_export;
pub mod tar_import;
pub mod walk;

pub use store::{ImageInfo, ImageStore, StoreError};
