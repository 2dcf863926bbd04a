//! OCI images: pulled from registries (the distribution API), imported from OCI image layouts
//! and `docker save` archives, exported as layouts, pushed, and made from machines as layers.
//!
//! - [`blobs`]: the content-addressed blob store under the pull cache, shared by every image;
//!   a blob gets in only after its digest was checked, and downloads resume.
//! - [`registry`]: the registry client (anonymous, Basic and bearer-token auth, [`auth`]).
//! - [`manifest`]: media types, manifests, indexes and platform selection.
//! - [`apply`]: layers onto a tree through the confined writer, with OCI whiteouts.
//! - [`diff`]: a layer from the difference between two trees (`commit --oci`).
//! - [`meta`]: what the store keeps about an OCI image beside its tree (`<store>/.oci/NAME.json`).
//! - [`pull`], [`layout`], [`push`], [`bundle`]: the verbs' library side.
//!
//! Registry and archive content is hostile input: digests are checked before anything is
//! used, sizes are bounded by the descriptors that announce them, and layers are written
//! only through [`super::confined::TreeWriter`].

pub mod apply;
pub mod auth;
pub mod blobs;
pub mod bundle;
pub mod commit;
pub mod diff;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod meta;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;

use std::io;
use std::path::PathBuf;

use super::confined::WriteError;
use super::interrupt::Interrupted;
use super::store::StoreError;
use super::tar_import::ImportError;
use super::walk::WalkError;

/// Why an OCI operation failed. Every variant names the step and the URL or path involved.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    /// An image reference that does not parse.
    #[error("invalid image reference '{reference}': {reason}")]
    BadReference {
        /// What was given.
        reference: String,
        /// What is wrong.
        reason: String,
    },
    /// A request failed below HTTP (DNS, connection, TLS).
    #[error("{step} {url} failed: {detail}")]
    Request {
        /// What was being done.
        step: &'static str,
        /// The URL.
        url: String,
        /// The error with its causes.
        detail: String,
    },
    /// The registry answered with an error.
    #[error("{step} {url}: {detail}")]
    Registry {
        /// What was being done.
        step: &'static str,
        /// The URL.
        url: String,
        /// The status, the registry's error codes and a hint.
        detail: String,
    },
    /// Authentication failed or is needed.
    #[error("authentication with {registry} failed: {detail}")]
    Auth {
        /// The registry (or token server).
        registry: String,
        /// What happened and what to do.
        detail: String,
    },
    /// Content whose digest is not the one that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}; the content was refused")]
    DigestMismatch {
        /// The URL or path.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// Content of another size than announced.
    #[error("{what}: {detail}")]
    Size {
        /// The URL or path.
        what: String,
        /// What was announced and what came.
        detail: String,
    },
    /// A media type mctl does not handle.
    #[error("{what} has media type '{media_type}', which is not supported ({hint})")]
    Unsupported {
        /// The manifest, layer or blob.
        what: String,
        /// Its media type.
        media_type: String,
        /// What is supported.
        hint: String,
    },
    /// No manifest of an index is for the platform asked for.
    #[error(
        "{reference} has no image for platform {wanted} (it has: {available}); choose one with --platform"
    )]
    NoPlatform {
        /// The image.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// What the index lists.
        available: String,
    },
    /// A manifest, index, configuration or archive that is not what it should be.
    #[error("{what}: {detail}")]
    Invalid {
        /// The document (URL or path).
        what: String,
        /// What is wrong.
        detail: String,
    },
    /// A local file operation failed.
    #[error("{step} '{path}': {source}{}", hint(source))]
    Io {
        /// What was being done.
        step: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A layer could not be applied.
    #[error("layer {digest}: {source}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// What the tar importer reported (bad compression, a refused or unwritable entry, …).
        source: ImportError,
    },
    /// Reading a tree failed.
    #[error(transparent)]
    Walk(#[from] WalkError),
    /// Writing a tree failed.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// The image store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A signal arrived.
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
}

/// What to do about the local errors users can fix.
fn hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
            " (the disk is full: free some space, or remove unused downloads with mctl prune-cache)"
        }
        Some(libc::EROFS) => " (the filesystem is read-only)",
        _ => "",
    }
}

impl OciError {
    /// The interruption behind this error, if it is one.
    pub fn interrupted(&self) -> Option<Interrupted> {
        match self {
            OciError::Interrupted(i) | OciError::Store(StoreError::Interrupted(i)) => Some(*i),
            OciError::Layer { source, .. } => source.interrupted(),
            OciError::Io { source, .. } if source.kind() == io::ErrorKind::Interrupted => {
                super::interrupt::check().err()
            }
            _ => None,
        }
    }

    pub(crate) fn io(step: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> OciError {
        let path = path.into();
        move |source| OciError::Io { step, path, source }
    }

    pub(crate) fn invalid(what: impl std::fmt::Display, detail: impl std::fmt::Display) -> OciError {
        OciError::Invalid { what: what.to_string(), detail: detail.to_string() }
    }
}
