//! What ships: the static binary in an empty root, and the Debian package installed into a
//! private root, both built by `dist/package` as a user would build them.
//!
//! These build release binaries of their own (the static one in `target/static`), which takes
//! minutes on a 2-core machine the first time; later runs reuse the build.

mod common;

use common::{ExchangeServer, Listen, Scratch, payload};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

/// `dist/package` runs cargo: one at a time, or two builds wait on each other's lock.
static BUILD: Mutex<()> = Mutex::new(());

/// Runs `dist/package WHAT` and returns the path it prints last.
fn package(what: &str) -> PathBuf {
    let _one = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/package"))
        .arg(what)
        .stderr(Stdio::inherit())
        .output()
        .expect("run dist/package");
    assert!(out.status.success(), "dist/package {what} failed");
    let text = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(text.lines().last().expect("a path printed").trim())
}

/// Whether an ELF file asks for a program interpreter (a `PT_INTERP` program header): every
/// dynamically linked executable does, a static one does not.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "an ELF file");
    assert_eq!(elf[4], 2, "64-bit ELF");
    let u16_at = |at: usize| u16::from_le_bytes(elf[at..at + 2].try_into().unwrap());
    let u64_at = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    (0..usize::from(phnum)).any(|i| {
        let at = phoff + i * usize::from(phentsize);
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

#[test]
fn the_elf_check_tells_a_dynamic_binary_from_a_static_one() {
    // The test binary itself is dynamic: the check must see its interpreter.
    let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(has_interpreter(&me));
}

/// Runs `vsplice ARGS` chrooted into `root`, which holds only the binary and an empty `dev/`
/// where the host's /dev is bind-mounted in a private mount namespace.
fn in_empty_root(root: &Path, args: &[&str]) -> Command {
    let mut script = format!(
        "mount --rbind /dev {0}/dev && exec chroot {0} /vsplice",
        root.display()
    );
    for a in args {
        script.push_str(&format!(" '{a}'"));
    }
    let mut c = Command::new("unshare");
    c.args(["--mount", "--propagation", "private", "sh", "-c", &script]);
    c
}

#[test]
fn the_static_binary_relays_a_hashed_transfer_inside_an_empty_root() {
    let bin = package("static");
    let elf = std::fs::read(&bin).unwrap();
    assert!(
        !has_interpreter(&elf),
        "{} asks for a dynamic loader",
        bin.display()
    );

    let scratch = Scratch::new("static-root");
    let root = scratch.path("root");
    std::fs::create_dir_all(root.join("dev")).unwrap();
    std::fs::copy(&bin, root.join("vsplice")).unwrap();
    let entries: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(entries.len(), 2, "the root holds the binary and dev/ only");

    let version = in_empty_root(&root, &["--version"]).output().unwrap();
    assert!(version.status.success(), "{version:?}");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("vsplice "));

    let upload = payload(16 << 20, 71);
    let download = payload(16 << 20, 72);
    let backend_listener = Listen::tcp();
    let connect = backend_listener.connect_address();
    let backend = ExchangeServer::spawn(backend_listener, download.data.clone(), 1);
    let port = common::free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1");
    let log = scratch.path("relay.log");
    let relay = in_empty_root(&root, &["-dd", &listen, &connect])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // sh and chroot exec: the child is the relay itself, killed if the test fails.
    let mut relay = KillOnDrop(relay);
    let stream = connect_when_listening(port, &log);
    let got = common::exchange(Box::new(stream), upload.data.clone()).unwrap();
    assert_eq!(got.sha, download.sha, "download through the relay");
    assert_eq!(backend.next(Duration::from_secs(60)).sha, upload.sha);
    let status = relay.0.wait().unwrap();
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Connects to 127.0.0.1:`port` once the relay logging to `log` says it listens.
fn connect_when_listening(port: u16, log: &Path) -> TcpStream {
    for _ in 0..600 {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains("listening on")) {
            return TcpStream::connect(("127.0.0.1", port)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the relay never listened: {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Runs `command`, failing the test with its output unless it succeeds; returns its stdout
/// and stderr together.
fn run_ok(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{command:?} failed: {text}");
    text
}

/// `text` without the "X backspace X" pairs that man writes for bold into a pipe.
fn without_overstrikes(text: &str) -> String {
    let mut plain: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if c == '\u{8}' {
            plain.pop();
        } else {
            plain.push(c);
        }
    }
    plain.into_iter().collect()
}

/// The files the package must put in place, relative to the root it is installed into.
const INSTALLED: &[&str] = &[
    "usr/bin/vsplice",
    "usr/share/bash-completion/completions/vsplice",
    "usr/share/zsh/vendor-completions/_vsplice",
    "usr/share/fish/vendor_completions.d/vsplice.fish",
    "lib/systemd/system/vsplice@.service",
    "lib/systemd/system/vsplice@.socket",
    "etc/vsplice/example.toml",
    "usr/share/doc/vsplice/copyright",
    "usr/share/doc/vsplice/docs/manual.md",
];

#[test]
fn the_debian_package_installs_its_files_where_they_belong_and_they_work() {
    let deb = package("deb");
    let scratch = Scratch::new("deb-root");
    let root = scratch.path("root");
    let db = root.join("var/lib/dpkg");
    for dir in ["info", "updates", "triggers"] {
        std::fs::create_dir_all(db.join(dir)).unwrap();
    }
    for file in ["status", "available"] {
        std::fs::write(db.join(file), "").unwrap();
    }
    // An empty root has no libc6 to satisfy the package's dependency: that one check is
    // forced, everything else dpkg checks as it would on a host.
    run_ok(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-not-root",
                "--force-depends",
                "--log=/dev/null",
                "-i",
            ])
            .arg(&deb),
    );
    let listed = run_ok(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["-L", "vsplice"]),
    );
    for file in INSTALLED {
        assert!(root.join(file).is_file(), "{file} not installed");
        assert!(listed.contains(&format!("/{file}")), "dpkg -L lacks {file}");
    }
    let conffiles = std::fs::read_to_string(db.join("info/vsplice.conffiles")).unwrap();
    assert!(
        conffiles.contains("/etc/vsplice/example.toml"),
        "{conffiles}"
    );

    let bin = root.join("usr/bin/vsplice");
    let version = run_ok(Command::new(&bin).arg("--version"));
    assert!(version.starts_with("vsplice "), "{version}");
    // The example configuration the package ships is one the binary accepts.
    run_ok(
        Command::new(&bin)
            .args(["serve", "--check", "--config"])
            .arg(root.join("etc/vsplice/example.toml")),
    );

    // The man page renders without a warning.
    let man = [
        "usr/share/man/man1/vsplice.1.gz",
        "usr/share/man/man1/vsplice.1",
    ]
    .iter()
    .map(|p| root.join(p))
    .find(|p| p.is_file())
    .expect("the man page installed");
    let page = Command::new("man")
        .args(["--warnings", "-l"])
        .arg(&man)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "0")
        .output()
        .unwrap();
    let warnings = String::from_utf8_lossy(&page.stderr);
    assert!(
        page.status.success() && warnings.trim().is_empty(),
        "{warnings}"
    );
    let text = without_overstrikes(&String::from_utf8_lossy(&page.stdout));
    assert!(text.contains("ADDRESS TYPES"), "{text}");

    // Bash loads the completion and knows the command by it.
    let complete = run_ok(Command::new("bash").arg("-c").arg(format!(
        "source {} && complete -p vsplice",
        root.join(INSTALLED[1]).display()
    )));
    assert!(complete.contains("vsplice"), "{complete}");

    // systemd reads the installed units without complaint, the binary they start included:
    // the package's /usr/bin is laid over the host's in a private mount namespace (nothing
    // is installed on the host), and each template is checked as an instance.
    let units = scratch.path("units");
    std::fs::create_dir_all(&units).unwrap();
    for unit in ["service", "socket"] {
        std::fs::copy(
            root.join(format!("lib/systemd/system/vsplice@.{unit}")),
            units.join(format!("vsplice@check.{unit}")),
        )
        .unwrap();
    }
    let script = format!(
        "mount -t overlay overlay -o lowerdir={}:/usr/bin /usr/bin && \
         systemd-analyze verify {1}/vsplice@check.service {1}/vsplice@check.socket",
        root.join("usr/bin").display(),
        units.display()
    );
    let verify = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("SYSTEMD_LOG_LEVEL", "warning")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(
        verify.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}
