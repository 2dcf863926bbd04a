//! The console with every kind of stdin and stdout a launcher meets in practice: a terminal, a
//! pipe, a socket, a regular file and /dev/null, in every combination, for `boot` and `run`.
//! Scripts, units with `StandardOutput=null` and test harnesses all start mctl like this.

mod common;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tty,
    Pipe,
    Socket,
    File,
    Null,
}

const KINDS: [Kind; 5] = [Kind::Tty, Kind::Pipe, Kind::Socket, Kind::File, Kind::Null];

/// The test's end of the launcher's stdout, read after the launcher exited.
enum Sink {
    Tty(std::sync::mpsc::Receiver<Vec<u8>>, OwnedFd),
    Pipe(std::process::ChildStdout),
    Socket(UnixStream),
    File(std::path::PathBuf),
    Null,
}

impl Sink {
    /// Everything written, or `None` where nothing can be read back (/dev/null).
    fn collect(self) -> Option<String> {
        match self {
            Sink::Tty(rx, _master) => {
                let mut out = Vec::new();
                while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(500)) {
                    out.extend(chunk);
                }
                Some(String::from_utf8_lossy(&out).into_owned())
            }
            Sink::Pipe(p) => Some(read_all(p)),
            Sink::Socket(s) => Some(read_all(s)),
            Sink::File(p) => Some(std::fs::read_to_string(p).unwrap()),
            Sink::Null => None,
        }
    }
}

/// Runs mctl with `args`, its stdin of kind `input` carrying "hello" (then end of input) and its
/// stdout of kind `output`; returns the exit code and what stdout showed.
/// Exit code, what the output showed (None when it cannot be read back) and stderr.
fn launch(scratch: &Path, args: &[&str], input: Kind, output: Kind) -> (Option<i32>, Option<String>, String) {
    let mut cmd = mctl();
    cmd.args(args).stderr(Stdio::piped());
    let pty = (input == Kind::Tty || output == Kind::Tty).then(|| nix::pty::openpty(None, None).unwrap());
    let mut feed: Option<Box<dyn FnOnce()>> = None;
    let mut early = Vec::new();
    match input {
        Kind::Tty => {
            let p = pty.as_ref().unwrap();
            cmd.stdin(Stdio::from(p.slave.try_clone().unwrap()));
            // As in a login session: the terminal is mctl's controlling terminal and mctl is in
            // its foreground (so the interactive console puts it in raw mode).
            // SAFETY: only async-signal-safe calls between fork and exec (setsid, ioctl).
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                    nix::unistd::setsid().map_err(std::io::Error::from)?;
                    if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let mut master = std::fs::File::from(p.master.try_clone().unwrap());
            // Typed input: a line, then end-of-file (^D) for the line discipline.
            feed = Some(Box::new(move || {
                let _ = master.write_all(b"hello\n\x04");
            }));
        }
        Kind::Pipe => {
            cmd.stdin(Stdio::piped());
        }
        Kind::Socket => {
            let (ours, theirs) = UnixStream::pair().unwrap();
            cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
            feed = Some(Box::new(move || {
                let mut ours = ours;
                let _ = ours.write_all(b"hello\n");
                let _ = ours.shutdown(std::net::Shutdown::Write);
            }));
        }
        Kind::File => {
            let p = scratch.join("stdin.txt");
            std::fs::write(&p, "hello\n").unwrap();
            cmd.stdin(std::fs::File::open(p).unwrap());
        }
        Kind::Null => {
            cmd.stdin(Stdio::null());
        }
    }
    let mut sink = match output {
        Kind::Tty => {
            let p = pty.as_ref().unwrap();
            cmd.stdout(Stdio::from(p.slave.try_clone().unwrap()));
            let master = p.master.try_clone().unwrap();
            Sink::Tty(pty_reader(&master), master)
        }
        Kind::Pipe => {
            cmd.stdout(Stdio::piped());
            Sink::Null
        }
        Kind::Socket => {
            let (ours, theirs) = UnixStream::pair().unwrap();
            cmd.stdout(Stdio::from(OwnedFd::from(theirs)));
            Sink::Socket(ours)
        }
        Kind::File => {
            let p = scratch.join("stdout.txt");
            cmd.stdout(std::fs::File::create(&p).unwrap());
            Sink::File(p)
        }
        Kind::Null => {
            cmd.stdout(Stdio::null());
            Sink::Null
        }
    };
    let mut child = cmd.spawn().unwrap();
    // Only the child may hold the other ends now (the Command keeps its copies until dropped):
    // their closing ends the readers.
    drop(cmd);
    drop(pty);
    if output == Kind::Pipe {
        sink = Sink::Pipe(child.stdout.take().unwrap());
    }
    if input == Kind::Pipe {
        let mut stdin = child.stdin.take().unwrap();
        // A booted guest may power off before reading: EPIPE then is fine (the run test checks
        // that the line arrived).
        let _ = stdin.write_all(b"hello\n");
    }
    if let Some(f) = feed {
        if let (Kind::Tty, Kind::Tty, Sink::Tty(rx, _), Some(first)) = (input, output, &sink, args.last()) {
            // The interactive console puts our terminal in raw mode first; type once the
            // command shows it runs (as a person would).
            if first.contains("echo ran") {
                let mut seen = Vec::new();
                while !String::from_utf8_lossy(&seen).contains("ran") {
                    match rx.recv_timeout(Duration::from_secs(20)) {
                        Ok(chunk) => seen.extend(chunk),
                        Err(_) => panic!("no output on the terminal: {:?}", String::from_utf8_lossy(&seen)),
                    }
                }
                early = seen;
            }
        }
        f();
    }
    let mut err = child.stderr.take().unwrap();
    let _ = &early;
    let status = wait_exit(&mut child, Duration::from_secs(30));
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("mctl {args:?} with stdin {input:?} and stdout {output:?} did not finish");
    });
    let mut e = String::new();
    let _ = err.read_to_string(&mut e);
    assert!(
        !e.contains("cannot watch") && !e.contains("Operation not permitted"),
        "stdin {input:?}, stdout {output:?}: {e}"
    );
    let shown = sink.collect().map(|rest| String::from_utf8_lossy(&early).into_owned() + &rest);
    (status.code(), shown, e)
}

#[test]
fn run_works_with_any_stdin_and_stdout() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "conrun");
    for input in KINDS {
        for output in KINDS {
            let args = [
                "run",
                "-q",
                "--register=no",
                "-D",
                dir.to_str().unwrap(),
                "--",
                "sh",
                "-c",
                "echo ran; cat",
            ];
            let (code, out, err) = launch(s.path(), &args, input, output);
            assert_eq!(code, Some(0), "stdin {input:?}, stdout {output:?}: {out:?}, stderr {err}");
            if let Some(out) = out {
                assert!(out.contains("ran"), "stdin {input:?}, stdout {output:?}: {out:?}");
                if input != Kind::Null {
                    assert!(out.contains("hello"), "stdin {input:?}, stdout {output:?}: {out:?}");
                }
                if output == Kind::Tty {
                    // The guest's terminal ends lines with "\r\n"; ours must not add a "\r".
                    assert!(
                        out.contains("ran\r\n") && !out.contains("\r\r"),
                        "stdin {input:?}, stdout {output:?}: {out:?}"
                    );
                }
            }
        }
    }
    assert_no_leaks("conrun", &dir);
}

#[test]
fn boot_works_with_any_stdin_and_stdout() {
    let s = scratch();
    let dir = copy_tree(busybox_tree(), s.path(), "conboot");
    // busybox init: say something on the console, then power the machine off.
    std::fs::write(dir.join("etc/inittab"), "::sysinit:/bin/echo booted-ok\n::sysinit:/bin/poweroff -f\n")
        .unwrap();
    for input in KINDS {
        for output in KINDS {
            let args = ["boot", "-q", "--register=no", "-D", dir.to_str().unwrap()];
            let (code, out, err) = launch(s.path(), &args, input, output);
            assert_eq!(code, Some(0), "stdin {input:?}, stdout {output:?}: {out:?}, stderr {err}");
            if let Some(out) = out {
                assert!(out.contains("booted-ok"), "stdin {input:?}, stdout {output:?}: {out:?}");
            }
        }
    }
    assert_no_leaks("conboot", &dir);
}
