//! `push-oci`: an image of the store to a registry, as an OCI manifest over its layers and
//! configuration. Blobs the registry has already are not sent again (HEAD), and blobs of an
//! image pulled from another repository of the same registry are mounted from there rather
//! than uploaded.

use std::path::PathBuf;

use super::OciError;
use super::blobs::BlobStore;
use super::digest::Digest;
use super::layout::record_or_tree_layer;
use super::manifest::{self, OCI_MANIFEST};
use super::pull::Progress;
use super::reference::Reference;
use super::registry::{self, Registry, RegistryOptions};
use crate::images::interrupt;
use crate::images::store::ImageStore;

/// Settings of a push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// How to reach the registry.
    pub registry: RegistryOptions,
    /// The pull cache (blob store).
    pub cache: PathBuf,
    /// Show progress on stderr.
    pub progress: bool,
}

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    /// The manifest's digest.
    pub digest: Digest,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry had (or mounted from another repository).
    pub skipped: usize,
}

/// Pushes image `image` to `dest` (a reference with a tag).
pub fn push_oci(store: &ImageStore, image: &str, dest: &str, opts: &PushOptions) -> Result<Pushed, OciError> {
    let r = Reference::parse(dest)?;
    if r.digest.is_some() {
        return Err(OciError::BadReference {
            reference: dest.to_owned(),
            reason: "push to a tag; the digest is the registry's to compute".into(),
        });
    }
    let tag = r.tag.clone().unwrap_or_else(|| "latest".into());
    let blobs = BlobStore::open(&opts.cache)?;
    let m = record_or_tree_layer(store, image, &blobs)?;
    // A repository of the same registry the image came from: its blobs can be mounted.
    let mount_from = Reference::parse(m.layers_from.as_deref().unwrap_or(&m.source))
        .ok()
        .filter(|s| s.registry == r.registry && s.repository != r.repository)
        .map(|s| s.repository);
    let mut scopes = vec![registry::push_scope(&r.repository)];
    scopes.extend(mount_from.as_deref().map(registry::pull_scope));
    let reg = Registry::connect(&r.registry, r.api_host(), &r.repository, scopes, &opts.registry)?;
    let progress = Progress::new(opts.progress);
    let (mut uploaded, mut skipped) = (0, 0);
    let mut sent = std::collections::HashSet::new();
    for d in m.layers.iter().chain(std::iter::once(&m.config)) {
        interrupt::check()?;
        if !sent.insert(d.digest.clone()) {
            continue;
        }
        if reg.has_blob(&r.repository, &d.digest)? {
            skipped += 1;
            continue;
        }
        let line = progress.line(format!("uploading {} ({} bytes)", d.digest, d.size));
        match reg.start_upload(&r.repository, &d.digest, mount_from.as_deref())? {
            None => skipped += 1,
            Some(location) => {
                reg.finish_upload(&location, &d.digest, &blobs.path(&d.digest))?;
                uploaded += 1;
            }
        }
        line.finish_and_clear();
    }
    let body = manifest::oci_manifest(&m.config, &m.layers);
    reg.put_manifest(&r.repository, &tag, OCI_MANIFEST, &body)?;
    Ok(Pushed { digest: Digest::of(&body), uploaded, skipped })
}
