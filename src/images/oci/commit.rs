//! `commit --oci`: a machine's tree as a new image made of its image's layers plus one layer
//! with what the machine changed (see [`super::diff`]).

use std::path::{Path, PathBuf};

use super::OciError;
use super::apply::LayerApplier;
use super::blobs::BlobStore;
use super::diff;
use super::layout::{now_rfc3339, record_or_tree_layer};
use super::manifest::Desc;
use super::meta::{self, ImageMeta};
use crate::images::store::{self, ImageInfo, ImageStore};

/// A machine's root to commit: where it is (frozen), and how to read it.
#[derive(Debug)]
pub struct Current<'a> {
    /// The tree.
    pub path: &'a Path,
    /// Ids and paths as the machine has them.
    pub view: &'a crate::images::shift::View,
}

/// Commits the tree `current` as image `image`: the layers of image `base` and one more with
/// the difference. `base_untouched` says the image directory still holds the base unchanged
/// (the machine ran on an overlay of it); otherwise the base is rebuilt from its layers to
/// compare against.
pub fn commit_layer(
    store: &ImageStore,
    base: &str,
    base_untouched: bool,
    current: Current<'_>,
    image: &str,
    source: &str,
    blobs: &BlobStore,
) -> Result<ImageInfo, OciError> {
    let Current { path: current, view } = current;
    store.ensure_absent(image)?;
    let base_info = store.get(base)?;
    if !base_untouched && meta::load(store, base)?.is_none() {
        return Err(OciError::invalid(
            format!("image {base}"),
            "the machine runs it directly (not on an overlay) and it has no OCI layers to compare the machine with: \
             start the machine with -x, or commit without --oci",
        ));
    }
    let base_meta = record_or_tree_layer(store, base, blobs)?;
    // The base tree to compare with: the image directory, or its layers unpacked afresh.
    let unpacked = if base_untouched {
        None
    } else {
        let tmp = store.temp_image("base", image)?;
        let mut a =
            LayerApplier::new(tmp.path()).map_err(|e| OciError::Layer { digest: "-".into(), source: e })?;
        for l in &base_meta.layers {
            a.apply(blobs.open_verified(&l.digest)?)
                .map_err(|e| OciError::Layer { digest: l.digest.to_string(), source: e })?;
        }
        a.finish().map_err(|e| OciError::Layer { digest: "-".into(), source: e })?;
        Some(tmp)
    };
    let base_tree: PathBuf = unpacked.as_ref().map_or(base_info.path.clone(), |t| t.path().to_owned());
    let layer = diff::diff_layer(Some(&base_tree), current, view, blobs)?;
    drop(unpacked);
    tracing::info!(
        "the new layer has {} changes ({} removals), {} bytes",
        layer.changed,
        layer.removed,
        layer.desc.size
    );

    let what = format!("the configuration of image {base}");
    let mut config: serde_json::Value =
        serde_json::from_str(&base_meta.config_text).map_err(|e| OciError::invalid(&what, e))?;
    let now = now_rfc3339();
    let diff_ids = config
        .pointer_mut("/rootfs/diff_ids")
        .and_then(|v| v.as_array_mut())
        .ok_or_else(|| OciError::invalid(&what, "it has no rootfs.diff_ids"))?;
    diff_ids.push(layer.diff_id.to_string().into());
    let obj = config.as_object_mut().ok_or_else(|| OciError::invalid(&what, "not a JSON object"))?;
    obj.insert("created".into(), now.clone().into());
    let history = obj.entry("history").or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if let Some(h) = history.as_array_mut() {
        h.push(serde_json::json!({"created": now, "created_by": format!("mctl commit --oci ({source})")}));
    }
    let text = serde_json::to_string(&config).expect("JSON serializes");
    meta::parse_config(text.as_bytes(), &what)?;
    let digest = blobs.put(text.as_bytes(), None, &what)?;
    let mut layers = base_meta.layers.clone();
    layers.push(layer.desc);
    let record = ImageMeta {
        source: source.to_owned(),
        layers_from: base_meta.layers_from.clone().or_else(|| Some(base_meta.source.clone())),
        manifest_digest: None,
        config: Desc { media_type: base_meta.config.media_type.clone(), digest, size: text.len() as u64 },
        config_text: text,
        layers,
        tree: None,
    };
    let tmp = store.temp_image("commit", image)?;
    store::copy_tree(current, tmp.path())?;
    // The image directory as the layers make it: the machine's ids, without what was mounted.
    view.settle(tmp.path()).map_err(|e| OciError::Io { step: e.step, path: e.path, source: e.source })?;
    meta::commit_image(store, tmp, image, &record)
}
