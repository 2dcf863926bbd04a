//! Bad input to `mctl boot` and `mctl run`: one clear message, a non-zero exit, nothing left.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// Runs mctl with `args`; asserts failure with exactly one line on stderr containing `needle`.
fn fails_with(args: &[&str], needle: &str) {
    let o = mctl().args(args).stdin(Stdio::null()).output().unwrap();
    let err = stderr(&o);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert!(err.contains(needle), "{args:?}: stderr {err:?} lacks {needle:?}");
    assert_eq!(err.lines().count(), 1, "{args:?}: expected one line, got {err:?}");
}

#[test]
fn missing_or_non_directory_root() {
    let s = scratch();
    let missing = s.path().join("nope");
    fails_with(&["boot", "-D", missing.to_str().unwrap()], "No such file or directory");
    fails_with(&["run", "-D", missing.to_str().unwrap(), "true"], "cannot be used");
    let file = s.path().join("file");
    std::fs::write(&file, "").unwrap();
    fails_with(&["boot", "-D", file.to_str().unwrap()], "is not a directory");
    fails_with(&["boot"], "use -D DIR");
}

#[test]
fn boot_refuses_trees_without_os_release_or_init() {
    let s = scratch();
    let bare = s.path().join("bare");
    std::fs::create_dir_all(bare.join("etc")).unwrap();
    fails_with(&["boot", "-D", bare.to_str().unwrap()], "does not look like an OS tree");
    std::fs::write(bare.join("etc/os-release"), "ID=test\n").unwrap();
    fails_with(&["boot", "-D", bare.to_str().unwrap()], "no init found");
    // An os-release that is a symlink out of the tree does not count.
    std::fs::remove_file(bare.join("etc/os-release")).unwrap();
    std::os::unix::fs::symlink("/etc/os-release", bare.join("etc/os-release")).unwrap();
    std::fs::create_dir_all(bare.join("usr/lib")).unwrap();
    fails_with(&["boot", "-D", bare.to_str().unwrap()], "does not look like an OS tree");
    assert_no_leaks("bare", &bare);
    assert_eq!(std::fs::read_dir(s.path()).unwrap().count(), 1, "something was created beside the tree");
}

#[test]
fn invalid_machine_names() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "names");
    for bad in ["bad_name", "-x", "a..b", ".host", &"n".repeat(65)] {
        fails_with(
            &["run", &format!("--machine={bad}"), "-D", dir.to_str().unwrap(), "true"],
            "invalid machine name",
        );
    }
    fails_with(&["run", "--hostname", "x y", "-D", dir.to_str().unwrap(), "true"], "invalid hostname");
    // A directory whose name cannot be cleaned into a machine name needs -M.
    let odd = s.path().join("___");
    std::fs::rename(&dir, &odd).unwrap();
    fails_with(&["run", "-D", odd.to_str().unwrap(), "true"], "give one with -M NAME");
    let o = mctl().args(["run", "-q", "-M", "fine", "-D", odd.to_str().unwrap(), "true"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_tree_in_use_is_locked() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "locked");
    let mut notify = NotifyListener::new(s.path());
    let mut first = Guarded(
        mctl()
            .args(["run", "-q", "-D", dir.to_str().unwrap(), "--", "sleep", "30"])
            .env("NOTIFY_SOCKET", &notify.path)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    notify.wait_leader(0, Duration::from_secs(10)).expect("first machine started");
    fails_with(
        &["run", "-M", "other", "-D", dir.to_str().unwrap(), "true"],
        "already in use by a running machine",
    );
    // Read-only machines share a tree, but not with a writer.
    fails_with(&["run", "--read-only", "-M", "ro", "-D", dir.to_str().unwrap(), "true"], "already in use");
    // Another tree under the same machine name is refused too.
    let twin = copy_tree(busybox_tree(), s.path(), "twin");
    fails_with(&["run", "-M", "locked", "-D", twin.to_str().unwrap(), "true"], "already running");
    stop_launcher(&mut first);
    assert_no_leaks("locked", &dir);
    assert_no_leaks("other", &dir);
}

#[test]
fn non_root_callers_are_told_so() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "nonroot");
    let o = mctl()
        .args(["run", "-D", dir.to_str().unwrap(), "true"])
        .uid(65534)
        .gid(65534)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("must run as root"), "{}", stderr(&o));
    assert_no_leaks("nonroot", &dir);
}

/// mctl starts without std's runtime shim (mctl::entry), which keeps what the shim did for
/// the standard descriptors and SIGPIPE.
#[test]
fn closed_standard_descriptors_and_a_closed_pipe_are_survived() {
    use std::os::unix::process::ExitStatusExt;
    // A closed stdout is reopened on /dev/null: printing "No images." succeeds.
    let s = scratch();
    let mut c = mctl_with_store(&s.path().join("store"), &s.path().join("cache"));
    c.arg("list-images").stderr(Stdio::piped());
    // SAFETY: close(2) is async-signal-safe and touches no memory.
    unsafe {
        c.pre_exec(|| {
            libc::close(1);
            Ok(())
        });
    }
    let o = c.output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    // A pipe nobody reads: the help is lost, and mctl is not killed by SIGPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status =
        mctl().arg("--help").stdin(Stdio::null()).stdout(writer).stderr(Stdio::null()).status().unwrap();
    assert_eq!(status.signal(), None, "{status:?}");
}

#[test]
fn bad_options() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "opts");
    let d = dir.to_str().unwrap();
    fails_with(
        &["run", "-D", d, "--bind=/nonexistent/src:/x", "true"],
        "bind mount source /nonexistent/src does not exist",
    );
    fails_with(&["run", "-D", d, "--bind=/tmp:relative", "true"], "must be an absolute path");
    fails_with(&["run", "-D", d, "--tmpfs=/proc", "true"], "would cover");
    fails_with(&["run", "-D", d, "--capability=CAP_BOGUS", "true"], "unknown capability");
    fails_with(&["run", "-D", d, "--kill-signal=SIGNOPE", "true"], "unknown signal");
    fails_with(&["run", "-D", d, "--setenv=1X=y", "true"], "invalid environment assignment");
    fails_with(&["boot", "-D", d, "--user=tester"], "--user cannot be used with boot");
    assert_no_leaks("opts", &dir);
}

/// `-M NAME` without `-D` boots `<store>/NAME`; a store entry that is a symlink is refused and
/// nothing is created where it points.
#[test]
fn an_image_name_runs_the_store_entry_but_never_follows_a_symlink() {
    let s = scratch();
    let store = s.path().join("store");
    std::fs::create_dir(&store).unwrap();
    copy_tree(busybox_tree(), &store, "good");
    let o = mctl()
        .env("MCTL_IMAGE_STORE", &store)
        .args(["run", "-q", "--register=no", "-M", "good", "--", "/bin/sh", "-c", "echo $(hostname)"])
        .output()
        .unwrap();
    assert_eq!(stdout(&o).trim(), "good", "{}", stderr(&o));

    let elsewhere = s.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, store.join("evil")).unwrap();
    let o = mctl()
        .env("MCTL_IMAGE_STORE", &store)
        .args(["run", "-q", "--register=no", "-M", "evil", "--", "/bin/true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("is a symlink"), "{}", stderr(&o));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0, "something was created behind the symlink");

    let o =
        mctl().env("MCTL_IMAGE_STORE", &store).args(["run", "-q", "-M", "ghost", "true"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("no image ghost in"), "{}", stderr(&o));
}
