//! Manifests and indexes: media types, parsing into what a pull needs (a configuration and
//! layers), platform selection, and the OCI manifests mctl writes itself (exports, pushes).

use std::fmt;

use oci_spec::image::{DescriptorBuilder, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType};

use super::OciError;
use super::digest::Digest;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image configuration.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image configuration.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Uncompressed OCI layer.
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// gzip OCI layer.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// zstd OCI layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// gzip Docker layer.
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Uncompressed Docker layer (as in `docker save` archives).
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";

/// The Accept header of manifest requests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The most layers an image may have (overlayfs stacks 128 at most; registries ~127).
pub const MAX_LAYERS: usize = 500;
/// The most an image configuration may weigh.
pub const CONFIG_LIMIT: u64 = 8 << 20;

/// What a content descriptor tells: media type, digest, size.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Desc {
    /// Media type.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// `sha256:` digest of the blob as stored (compressed, for a gzip layer).
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
}

impl Desc {
    /// This descriptor with the OCI spelling of its media type (Docker layer and config types
    /// have OCI twins with the same content).
    pub fn as_oci(&self) -> Desc {
        let mt = match self.media_type.as_str() {
            DOCKER_LAYER_GZIP => OCI_LAYER_GZIP,
            DOCKER_LAYER => OCI_LAYER,
            DOCKER_CONFIG => OCI_CONFIG,
            m => m,
        };
        Desc { media_type: mt.to_owned(), ..self.clone() }
    }

    fn to_spec(&self) -> oci_spec::image::Descriptor {
        DescriptorBuilder::default()
            .media_type(MediaType::from(self.media_type.as_str()))
            .digest(self.digest.to_spec())
            .size(self.size)
            .build()
            .expect("all descriptor fields are set")
    }
}

/// What kind of document a manifest response is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An image manifest (OCI or Docker schema 2).
    Manifest,
    /// An index or Docker manifest list.
    Index,
}

/// Tells a manifest from an index, by its `mediaType` field, else the Content-Type, else its
/// shape; refuses Docker schema 1 and anything else.
pub fn classify(body: &[u8], content_type: Option<&str>, what: &str) -> Result<Kind, OciError> {
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| OciError::invalid(what, format!("not a JSON manifest: {e}")))?;
    let field = v.get("mediaType").and_then(|m| m.as_str());
    let header = content_type.map(|c| c.split(';').next().unwrap_or("").trim());
    let unsupported = |mt: &str| OciError::Unsupported {
        what: what.to_owned(),
        media_type: mt.to_owned(),
        hint: "supported: OCI manifests and indexes, Docker schema 2 manifests and manifest lists".into(),
    };
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(unsupported(
            field.or(header).unwrap_or("application/vnd.docker.distribution.manifest.v1+json"),
        ));
    }
    for mt in field.into_iter().chain(header) {
        match mt {
            OCI_MANIFEST | DOCKER_MANIFEST => return Ok(Kind::Manifest),
            OCI_INDEX | DOCKER_LIST => return Ok(Kind::Index),
            // Generic types say nothing: look at the shape.
            "application/json" | "text/plain" | "application/octet-stream" | "" => {}
            other => return Err(unsupported(other)),
        }
    }
    if v.get("manifests").is_some() {
        Ok(Kind::Index)
    } else if v.get("config").is_some() && v.get("layers").is_some() {
        Ok(Kind::Manifest)
    } else {
        Err(OciError::invalid(what, "neither an image manifest nor an index"))
    }
}

fn digest_of(d: &oci_spec::image::Digest, what: &str) -> Result<Digest, OciError> {
    Digest::parse(d.as_ref()).map_err(|e| OciError::invalid(what, e))
}

/// The configuration and layers of an image manifest, checked: a container image
/// configuration, layers of supported types, no external (foreign) layers.
pub fn parse_manifest(body: &[u8], what: &str) -> Result<(Desc, Vec<Desc>), OciError> {
    let m: ImageManifest = serde_json::from_slice(body)
        .map_err(|e| OciError::invalid(what, format!("not a valid image manifest: {e}")))?;
    let c = m.config();
    let config =
        Desc { media_type: c.media_type().to_string(), digest: digest_of(c.digest(), what)?, size: c.size() };
    if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
        return Err(OciError::Unsupported {
            what: format!("the configuration of {what}"),
            media_type: config.media_type,
            hint: "this is not a container image".into(),
        });
    }
    if config.size > CONFIG_LIMIT {
        return Err(OciError::Size {
            what: what.to_owned(),
            detail: format!("its configuration claims {} bytes", config.size),
        });
    }
    if m.layers().len() > MAX_LAYERS {
        return Err(OciError::invalid(
            what,
            format!("{} layers, more than the {MAX_LAYERS} allowed", m.layers().len()),
        ));
    }
    let mut layers = Vec::new();
    for l in m.layers() {
        let mt = l.media_type().to_string();
        let d = digest_of(l.digest(), what)?;
        if l.urls().as_ref().is_some_and(|u| !u.is_empty()) {
            return Err(OciError::Unsupported {
                what: format!("layer {d} of {what}"),
                media_type: mt,
                hint: "layers downloaded from external URLs are not supported".into(),
            });
        }
        layer_compression(&mt).map_err(|hint| OciError::Unsupported {
            what: format!("layer {d} of {what}"),
            media_type: mt.clone(),
            hint,
        })?;
        layers.push(Desc { media_type: mt, digest: d, size: l.size() });
    }
    Ok((config, layers))
}

/// How a layer of media type `mt` is compressed (the content is checked again when read).
pub fn layer_compression(mt: &str) -> Result<&'static str, String> {
    match mt {
        OCI_LAYER | DOCKER_LAYER => Ok("tar"),
        OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => Ok("gzip"),
        OCI_LAYER_ZSTD => Ok("zstd"),
        _ => {
            Err("supported layers: tar, tar+gzip and tar+zstd (OCI), rootfs.diff.tar(.gzip) (Docker)".into())
        }
    }
}

/// A platform: os/architecture[/variant].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, …
    pub arch: String,
    /// `v7`, `v8`, …
    pub variant: Option<String>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok =
            |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(Platform { os: (*os).into(), arch: (*arch).into(), variant: None })
            }
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => {
                Ok(Platform { os: (*os).into(), arch: (*arch).into(), variant: Some((*v).into()) })
            }
            _ => Err(format!("'{s}' is not a platform (expected OS/ARCH[/VARIANT], e.g. linux/amd64)")),
        }
    }

    /// This machine's platform, in Go's names (what images use).
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", None),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            "riscv64" => ("riscv64", None),
            "s390x" => ("s390x", None),
            a => (a, None),
        };
        Platform { os: "linux".into(), arch: arch.into(), variant: variant.map(Into::into) }
    }

    /// How well an index entry for (os, arch, variant) fits: `None` if not at all, higher is
    /// better (an exact variant beats none).
    fn fit(&self, os: &str, arch: &str, variant: Option<&str>) -> Option<u8> {
        if os != self.os || arch != self.arch {
            return None;
        }
        // arm64 without a variant is v8.
        let norm = |v: Option<&str>| match (arch, v) {
            ("arm64", None) => Some("v8".to_owned()),
            (_, v) => v.map(str::to_owned),
        };
        match (norm(self.variant.as_deref()), norm(variant)) {
            (Some(a), Some(b)) if a == b => Some(2),
            (None, _) => Some(1),
            (Some(_), None) => Some(0),
            _ => None,
        }
    }
}

/// The manifest of an index that fits `platform` best.
pub fn select_platform(body: &[u8], platform: &Platform, what: &str) -> Result<Desc, OciError> {
    let idx: ImageIndex = serde_json::from_slice(body)
        .map_err(|e| OciError::invalid(what, format!("not a valid image index: {e}")))?;
    let mut best: Option<(u8, &oci_spec::image::Descriptor)> = None;
    let mut available = Vec::new();
    for m in idx.manifests() {
        let Some(p) = m.platform() else { continue };
        let (os, arch, variant) = (p.os().to_string(), p.architecture().to_string(), p.variant().as_deref());
        // Attestations and other non-images are listed as unknown/unknown.
        if os == "unknown" {
            continue;
        }
        available.push(match variant {
            Some(v) => format!("{os}/{arch}/{v}"),
            None => format!("{os}/{arch}"),
        });
        if let Some(score) = platform.fit(&os, &arch, variant)
            && best.is_none_or(|(s, _)| score > s)
        {
            best = Some((score, m));
        }
    }
    let Some((_, m)) = best else {
        return Err(OciError::NoPlatform {
            reference: what.to_owned(),
            wanted: platform.to_string(),
            available: if available.is_empty() { "nothing usable".into() } else { available.join(", ") },
        });
    };
    Ok(Desc { media_type: m.media_type().to_string(), digest: digest_of(m.digest(), what)?, size: m.size() })
}

/// An OCI image manifest (OCI media types throughout) for `config` and `layers`.
pub fn oci_manifest(config: &Desc, layers: &[Desc]) -> Vec<u8> {
    let m = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config.as_oci().to_spec())
        .layers(layers.iter().map(|l| l.as_oci().to_spec()).collect::<Vec<_>>())
        .build()
        .expect("all manifest fields are set");
    serde_json::to_vec(&m).expect("a manifest serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    #[test]
    fn classifies_and_refuses() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":2}},"layers":[]}}"#,
            d('a')
        );
        assert_eq!(classify(m.as_bytes(), Some(OCI_MANIFEST), "m").unwrap(), Kind::Manifest);
        assert_eq!(classify(m.as_bytes(), None, "m").unwrap(), Kind::Manifest);
        assert_eq!(
            classify(br#"{"schemaVersion":2,"manifests":[]}"#, Some("application/json"), "i").unwrap(),
            Kind::Index
        );
        let e = classify(br#"{"schemaVersion":1,"fsLayers":[]}"#, None, "old").unwrap_err();
        assert!(e.to_string().contains("not supported"), "{e}");
        assert!(classify(b"{}", Some("application/vnd.example+json"), "x").is_err());
        // A layer of an unknown type, and a foreign one.
        let bad = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":2}},"layers":[{{"mediaType":"application/x-evil","digest":"{}","size":1}}]}}"#,
            d('a'),
            d('b')
        );
        assert!(parse_manifest(bad.as_bytes(), "m").unwrap_err().to_string().contains("application/x-evil"));
        let foreign = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{OCI_CONFIG}","digest":"{}","size":2}},"layers":[{{"mediaType":"{OCI_LAYER_GZIP}","digest":"{}","size":1,"urls":["http://x"]}}]}}"#,
            d('a'),
            d('b')
        );
        assert!(parse_manifest(foreign.as_bytes(), "m").is_err());
        // A digest that would be a path.
        let path = m.replace(&d('a'), "sha256:../../../etc/passwd");
        assert!(parse_manifest(path.as_bytes(), "m").is_err());
    }

    #[test]
    fn platforms() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v6"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"arm","variant":"v7"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":1,"platform":{{"os":"unknown","architecture":"unknown"}}}}]}}"#,
            d('1'),
            d('2'),
            d('3'),
            d('4')
        );
        let pick = |p: &str| {
            select_platform(idx.as_bytes(), &Platform::parse(p).unwrap(), "i").map(|d| d.digest.to_string())
        };
        assert_eq!(pick("linux/arm/v7").unwrap(), d('2'));
        assert_eq!(pick("linux/amd64").unwrap(), d('3'));
        let e = pick("linux/s390x").unwrap_err().to_string();
        assert!(e.contains("linux/arm/v6, linux/arm/v7, linux/amd64"), "{e}");
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/../x").is_err());
    }

    #[test]
    fn written_manifests_use_oci_types() {
        let c = Desc { media_type: DOCKER_CONFIG.into(), digest: Digest::parse(&d('c')).unwrap(), size: 3 };
        let l =
            Desc { media_type: DOCKER_LAYER_GZIP.into(), digest: Digest::parse(&d('e')).unwrap(), size: 9 };
        let m = oci_manifest(&c, &[l]);
        let (config, layers) = parse_manifest(&m, "m").unwrap();
        assert_eq!((config.media_type.as_str(), layers[0].media_type.as_str()), (OCI_CONFIG, OCI_LAYER_GZIP));
        assert_eq!(classify(&m, None, "m").unwrap(), Kind::Manifest);
    }
}
