//! Object paths of machines, escaped as sd-bus's `bus_label_escape()` does.

/// The manager object.
pub const MANAGER_PATH: &str = "/org/freedesktop/machine1";
/// The parent of machine objects.
pub const MACHINE_DIR: &str = "/org/freedesktop/machine1/machine";
/// The parent of image objects.
pub const IMAGE_DIR: &str = "/org/freedesktop/machine1/image";

/// Letters stay; digits stay unless first; every other byte becomes `_xx` (lowercase hex); the
/// empty string becomes `_`.
pub fn escape(name: &str) -> String {
    if name.is_empty() {
        return "_".into();
    }
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Reverses [`escape`]; a malformed escape is kept literally.
pub fn unescape(label: &str) -> String {
    if label == "_" {
        return String::new();
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_'
            && i + 2 < bytes.len() + 1
            && let Some(v) = label.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The object path of image `name`.
pub fn image_path(name: &str) -> String {
    format!("{IMAGE_DIR}/{}", escape(name))
}

/// The object path of machine `name`.
pub fn machine_path(name: &str) -> String {
    format!("{MACHINE_DIR}/{}", escape(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_sd_bus() {
        for (name, label) in [
            ("foo", "foo"),
            ("my-box", "my_2dbox"),
            ("web.01", "web_2e01"),
            ("0abc", "_30abc"),
            (".host", "_2ehost"),
            ("probe-1", "probe_2d1"),
            ("", "_"),
        ] {
            assert_eq!(escape(name), label);
            assert_eq!(unescape(label), name);
        }
        assert_eq!(unescape("bad_zz"), "bad_zz");
    }
}
