//! The guest labs' package fetching on a machine whose apt lists are months old: the labs keep
//! private lists taken from the machine's apt sources, and refresh them when a download fails
//! (a list that names a version the mirror has replaced gets 404).

mod common;

use common::debs::{AptSource, DebRoot, parse_deb822, parse_one_line};
use std::path::Path;
use std::process::Command;

#[test]
fn deb822_sources_give_each_uri_its_suites_components_and_key() {
    let text = "Types: deb\n# a comment\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main contrib\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\nComponents: main\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\nEnabled: no\n";
    let sources = parse_deb822(text);
    assert_eq!(
        sources,
        vec![AptSource {
            uri: "http://mirror.example/debian".into(),
            suites: vec!["bookworm".into(), "bookworm-updates".into()],
            components: vec!["main".into(), "contrib".into()],
            signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
        }]
    );
    assert!(sources[0].is_debian_archive());
    assert_eq!(
        sources[0].line(),
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
         http://mirror.example/debian bookworm bookworm-updates main contrib"
    );
}

#[test]
fn one_line_sources_keep_their_signed_by_and_skip_deb_src_and_comments() {
    let text = "# deb http://old/debian buster main\ndeb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm main\ndeb-src http://m/debian bookworm main\ndeb http://m/debian-security bookworm-security main # tail\n";
    let sources = parse_one_line(text);
    assert_eq!(sources.len(), 2);
    assert_eq!(sources[0].signed_by.as_deref(), Some("/k.gpg"));
    assert_eq!(sources[0].suites, vec!["bookworm".to_string()]);
    assert!(
        !sources[1].is_debian_archive(),
        "security is not the main archive"
    );
}

/// The version aged lists name: no mirror has it.
const GONE: &str = "0.0.1-gone";
/// The kernel an aged `linux-image-amd64` depends on: no mirror has it.
const GONE_KERNEL: &str = "linux-image-0.0.1-gone-amd64";

/// Rewrites the version and file name of each of `packages` in every Packages list under
/// `lists` (and points an aged `linux-image-amd64` at [`GONE_KERNEL`]), as a list that was
/// fetched before the mirror replaced those versions would read. Returns how many lists it
/// rewrote.
fn age_packages_in_lists(lists: &Path, packages: &[&str]) -> usize {
    let mut aged = 0;
    for entry in std::fs::read_dir(lists).unwrap().flatten() {
        let path = entry.path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.contains("_Packages") {
            continue;
        }
        let out = Command::new("/usr/lib/apt/apt-helper")
            .arg("cat-file")
            .arg(&path)
            .output()
            .expect("apt-helper cat-file");
        assert!(out.status.success(), "apt-helper cat-file {name}");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut stanzas: Vec<String> = text.split("\n\n").map(str::to_string).collect();
        let mut hit = false;
        for stanza in stanzas.iter_mut() {
            let Some(package) = packages
                .iter()
                .find(|p| stanza.starts_with(&format!("Package: {p}\n")))
            else {
                continue;
            };
            *stanza = stanza
                .lines()
                .map(|l| {
                    if l.starts_with("Version: ") {
                        format!("Version: {GONE}")
                    } else if let Some(f) = l.strip_prefix("Filename: ") {
                        let dir = f.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        format!("Filename: {dir}/{package}_{GONE}_amd64.deb")
                    } else if l.starts_with("Depends: ") && *package == "linux-image-amd64" {
                        format!("Depends: {GONE_KERNEL} (= {GONE})")
                    } else {
                        l.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join("\n");
            hit = true;
        }
        if hit {
            let plain = name
                .trim_end_matches(".lz4")
                .trim_end_matches(".gz")
                .trim_end_matches(".xz")
                .to_string();
            std::fs::remove_file(&path).unwrap();
            std::fs::write(lists.join(plain), stanzas.join("\n\n")).unwrap();
            aged += 1;
        }
    }
    aged
}

/// Needs the machine's Debian mirror (the labs do too); `hello` is a small package.
#[test]
fn a_lab_whose_package_lists_name_a_replaced_version_refreshes_them_and_unpacks_the_package() {
    let dir = tempfile_dir("lab-apt-stale");
    let debs = DebRoot::new(&dir);
    debs.ensure(&["hello"]).expect("first fetch");
    assert!(debs.path("usr/bin/hello").exists());
    // Forget the package, and make the lists name a version the mirror never had.
    std::fs::remove_dir_all(&debs.root).unwrap();
    let aged = age_packages_in_lists(&debs.lists_dir(), &["hello"]);
    assert!(aged > 0, "no list named hello");
    let again = DebRoot::new(&dir);
    again
        .ensure(&["hello"])
        .expect("a download that gets 404 refreshes the lists and succeeds");
    assert!(again.path("usr/bin/hello").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The QEMU lab boots the kernel Debian's `linux-image-amd64` points at, asked of the labs'
/// own lists like every package they fetch: the machine's lists may be months old (naming a
/// kernel the mirror has since dropped) or never fetched at all.
#[test]
fn the_qemu_labs_kernel_package_is_named_by_the_labs_own_lists() {
    let debs = common::lab::deb_root();
    let depends = debs
        .depends("linux-image-amd64")
        .expect("apt-cache depends on the lab's lists");
    let kernel = depends
        .first()
        .expect("linux-image-amd64 depends on a kernel package");
    assert!(
        kernel.starts_with("linux-image-") && kernel.ends_with("-amd64"),
        "{depends:?}"
    );
}

/// The packages the UML lab unpacks first (`Lab::prepare_packaged`), in the same call.
const LAB_PACKAGES: &[&str] = &["user-mode-linux", "busybox-static"];

/// Set in the environment of [`stale_machine_lists_child`]: the folder holding the aged lists
/// (`lists`) and an empty apt cache (`cache`) to mount over the machine's.
const STALE_LISTS_CHILD: &str = "VSPLICE_STALE_LISTS_CHILD";
/// The mount namespace of the test that starts the child, which the child must not share.
const PARENT_MOUNT_NS: &str = "VSPLICE_PARENT_MOUNT_NS";

fn mount_namespace() -> String {
    std::fs::read_link("/proc/self/ns/mnt")
        .expect("reading /proc/self/ns/mnt")
        .display()
        .to_string()
}

/// The versions of `package` that the machine's apt (its configuration, lists and cache as
/// this process sees them) names.
fn machine_versions(package: &str) -> Vec<String> {
    let out = Command::new("apt-cache")
        .args(["show", package])
        .output()
        .expect("running apt-cache");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Version: "))
        .map(str::to_string)
        .collect()
}

fn bind_mount(from: &Path, onto: &str) {
    let out = Command::new("mount")
        .arg("--bind")
        .arg(from)
        .arg(onto)
        .output()
        .expect("running mount");
    assert!(
        out.status.success(),
        "mount --bind {} {onto}: {}",
        from.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs in a private mount namespace (see the test below): mounts the aged lists over
/// `/var/lib/apt/lists` (and an empty cache over `/var/cache/apt`, so apt's binary cache of
/// the machine's lists is not rebuilt from them), checks that the machine's own apt now names
/// versions the mirror does not have, and fetches what the labs fetch into an empty lab
/// folder. Does nothing when run as an ordinary test.
#[test]
fn stale_machine_lists_child() {
    let Some(dir) = std::env::var_os(STALE_LISTS_CHILD).map(std::path::PathBuf::from) else {
        return;
    };
    let parent = std::env::var(PARENT_MOUNT_NS).expect("the parent's mount namespace");
    assert_ne!(
        mount_namespace(),
        parent,
        "not in a mount namespace of its own: the machine's apt lists are not to be mounted over"
    );
    bind_mount(&dir.join("lists"), "/var/lib/apt/lists");
    bind_mount(&dir.join("cache"), "/var/cache/apt");
    let stale = !machine_versions("busybox-static").is_empty();
    if stale {
        // What the machine's apt would fetch from these lists is gone from the mirror.
        for package in LAB_PACKAGES {
            let versions = machine_versions(package);
            assert!(
                !versions.is_empty() && versions.iter().all(|v| v == GONE),
                "the machine's apt names {package} {versions:?}"
            );
        }
        let scratch = dir.join("machine-download");
        std::fs::create_dir_all(&scratch).unwrap();
        let out = Command::new("apt-get")
            .args([
                "-q",
                "-oAPT::Sandbox::User=root",
                "download",
                "busybox-static",
            ])
            .current_dir(&scratch)
            .output()
            .expect("running apt-get");
        assert!(
            !out.status.success(),
            "the machine's apt fetched busybox-static {GONE}?"
        );
        println!(
            "the machine's apt-get download busybox-static: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    } else {
        println!("the machine has no apt lists naming busybox-static: testing with none");
    }
    // The labs, from an empty VSPLICE_LAB_DIR: the UML lab's packages, and the kernel the
    // QEMU lab would boot.
    let debs = common::lab::deb_root();
    assert!(
        debs.root.starts_with(dir.join("lab")),
        "VSPLICE_LAB_DIR is the empty folder: {}",
        debs.root.display()
    );
    debs.ensure(LAB_PACKAGES)
        .expect("the labs fetch their packages whatever the machine's lists say");
    assert!(debs.path("usr/bin/linux.uml").exists());
    assert!(debs.path("bin/busybox").exists());
    let kernel = debs
        .depends("linux-image-amd64")
        .expect("apt-cache depends on the lab's lists")
        .into_iter()
        .next()
        .expect("linux-image-amd64 depends on a kernel package");
    assert_ne!(kernel, GONE_KERNEL, "the QEMU lab read the machine's lists");
    assert!(
        kernel.starts_with("linux-image-") && kernel.ends_with("-amd64"),
        "{kernel}"
    );
    // Nor did the labs refresh the machine's lists: they still name what they named.
    if stale {
        let versions = machine_versions("busybox-static");
        assert!(
            versions.iter().all(|v| v == GONE),
            "the labs refreshed the machine's lists: busybox-static {versions:?}"
        );
    }
}

/// A machine whose apt lists are months old, or name versions that no longer exist at all,
/// does not stop the labs: in a mount namespace (`unshare --mount`, so the machine's apt state
/// is never touched) whose `/var/lib/apt/lists` are the machine's own lists with the labs'
/// packages aged to a version no mirror has, an empty lab folder still fetches and unpacks
/// `user-mode-linux` and `busybox-static`, and names the QEMU lab's kernel. Needs root (for
/// the namespace; skipped without it) and the machine's Debian mirror (the labs do too).
#[test]
fn the_labs_fetch_their_packages_whatever_the_machines_apt_lists_name() {
    if !nix::unistd::geteuid().is_root() {
        println!("skipped: a mount namespace over the machine's apt lists needs root");
        return;
    }
    let dir = tempfile_dir("lab-apt-machine");
    let lists = dir.join("lists");
    std::fs::create_dir_all(lists.join("partial")).unwrap();
    std::fs::create_dir_all(dir.join("cache/archives/partial")).unwrap();
    // The machine's lists (a fresh machine may have none: then the folder stays empty).
    if let Ok(entries) = std::fs::read_dir("/var/lib/apt/lists") {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) && entry.file_name() != "lock" {
                std::fs::copy(entry.path(), lists.join(entry.file_name())).unwrap();
            }
        }
    }
    let mut aged_packages = LAB_PACKAGES.to_vec();
    aged_packages.push("linux-image-amd64");
    let aged = age_packages_in_lists(&lists, &aged_packages);
    println!("{aged} of the machine's package lists aged");
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stale_machine_lists_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STALE_LISTS_CHILD, &dir)
        .env(PARENT_MOUNT_NS, mount_namespace())
        .env("VSPLICE_LAB_DIR", dir.join("lab"))
        .output()
        .expect("running unshare --mount");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child in its mount namespace failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");
    // The namespace kept its mounts to itself.
    assert!(!machine_versions("busybox-static").contains(&GONE.to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}
