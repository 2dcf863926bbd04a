//! Build script: records the git revision the binaries are built from, for `--version`
//! ("unknown" outside a git checkout, e.g. from a source tarball).

use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .is_some_and(|o| !o.stdout.is_empty());
    let suffix = if dirty { "-dirty" } else { "" };
    println!("cargo:rustc-env=MCTL_GIT_REVISION={revision}{suffix}");
    // The seccomp filter cache is keyed by this digest of the lists and code the filters are
    // made from (not by the revision: an uncommitted edit must not reuse an old filter).
    let mut files: Vec<_> = std::fs::read_dir("src/seccomp")
        .expect("read src/seccomp")
        .map(|e| e.expect("read src/seccomp").path())
        .collect();
    files.sort();
    // FNV-1a, 64 bits, over the files' names and contents: only edits have to change it.
    let mut source = Vec::new();
    for f in files {
        source.extend_from_slice(f.to_string_lossy().as_bytes());
        source.extend(std::fs::read(&f).expect("read a file of src/seccomp"));
    }
    let digest = source
        .iter()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3));
    println!("cargo:rustc-env=MCTL_SECCOMP_SOURCE_DIGEST={digest:016x}");
    println!("cargo:rerun-if-changed=src/seccomp");
    link_unwinder_statically();
    pack_relative_relocations();
    order_launch_path_code();
    // A new commit or checkout changes HEAD or the ref it points at. Only files that exist:
    // cargo counts a missing one as changed, and a checkout without packed-refs rebuilt the
    // crate on every build (minutes for a release).
    for file in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(file).exists() {
            println!("cargo:rerun-if-changed={file}");
        }
    }
}

/// Links GCC's unwinder (`libgcc_eh.a`) into the binaries, so that they do not load
/// `libgcc_s.so.1`: its constructor probes the CPU with some twenty `cpuid` instructions, each
/// a trap to the hypervisor in a virtual machine, which cost every `mctl` command 0.15 ms
/// here (a tenth of the launcher's own start). The standard library still asks for `-lgcc_s`,
/// but with the unwinder's symbols already resolved the linker's `--as-needed` drops it.
/// Where the compiler has no `libgcc_eh.a`, the binaries keep the shared library.
fn link_unwinder_statically() {
    if std::env::var("CARGO_CFG_TARGET_ENV").as_deref() != Ok("gnu") {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let Some(path) = Command::new(cc)
        .arg("-print-file-name=libgcc_eh.a")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| std::path::PathBuf::from(s.trim()))
        // The compiler echoes the bare name when it has no such file.
        .filter(|p| p.is_absolute() && p.is_file())
    else {
        return;
    };
    let dir = path.parent().expect("an absolute file path has a parent");
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static:-bundle,+verbatim=libgcc_eh.a");
}

/// Links the binaries with relative relocations packed (DT_RELR: glibc 2.36, binutils 2.38)
/// when the toolchain can: mctl is a position-independent 17 MB binary with some 18,000 of
/// them, which the dynamic loader reads (435 KB of table) and applies on every start of every
/// launcher process; packed, the table is 5 KB (`run /bin/true` about 0.2 ms faster).
/// A trial link tells whether the linker and the C library support it.
fn pack_relative_relocations() {
    const FLAG: &str = "-Wl,-z,pack-relative-relocs";
    let linux_gnu = std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu");
    let host = std::env::var("HOST").unwrap_or_default();
    if !linux_gnu || std::env::var("TARGET").is_ok_and(|t| t != host) {
        return;
    }
    let Ok(out) = std::env::var("OUT_DIR") else { return };
    let src = std::path::Path::new(&out).join("relr-probe.c");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return;
    }
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    let linked = Command::new(cc)
        .args(["-pie", "-fPIE", FLAG, "-o"])
        .arg(std::path::Path::new(&out).join("relr-probe"))
        .arg(&src)
        .output()
        .is_ok_and(|o| o.status.success() && o.stderr.is_empty());
    if linked {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
}

/// Links the code a launch runs (the launcher, its outer child and PID 1 of `mctl run`)
/// contiguously, in the order of `src/bin/launch-path.order` (bench/order-launch-path.py makes
/// it from a profile). Scattered over 12 MB of text, that code cost each of the three
/// processes page faults of its own (a forked child does not inherit its parent's mappings of
/// the binary's pages): 263 per launch on the machine of issue #16, about 35 once laid out,
/// and `run /bin/true` 8% faster. Release builds only, and only where the linker takes an
/// ordering file (lld, rustc's own linker on x86_64 Linux since 1.90), which a trial link of
/// an empty program with the same compiler and flags tells. Names the file lists that a build
/// lacks are skipped: a stale file costs speed, not correctness.
fn order_launch_path_code() {
    const ORDER: &str = "src/bin/launch-path.order";
    println!("cargo:rerun-if-changed={ORDER}");
    if std::env::var("PROFILE").as_deref() != Ok("release") {
        return;
    }
    let (Ok(out), Ok(dir)) = (std::env::var("OUT_DIR"), std::env::var("CARGO_MANIFEST_DIR")) else {
        return;
    };
    let order = std::path::Path::new(&dir).join(ORDER);
    if !order.is_file() {
        return;
    }
    let flags = [
        format!("-Wl,--symbol-ordering-file={}", order.display()),
        "-Wl,--no-warn-symbol-ordering".to_owned(),
    ];
    let out = std::path::Path::new(&out);
    let src = out.join("order-probe.rs");
    if std::fs::write(&src, "fn main() {}\n").is_err() {
        return;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let mut probe = Command::new(rustc);
    probe
        .arg("--crate-name=order_probe")
        .arg("--edition=2021")
        .arg("-o")
        .arg(out.join("order-probe"))
        .arg(&src);
    if let Ok(target) = std::env::var("TARGET") {
        probe.arg(format!("--target={target}"));
    }
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(rustflags.split('\x1f').filter(|f| !f.is_empty()));
    for flag in &flags {
        probe.arg(format!("-Clink-arg={flag}"));
    }
    if probe.output().is_ok_and(|o| o.status.success()) {
        for flag in &flags {
            println!("cargo:rustc-link-arg-bins={flag}");
        }
    }
}
