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

/// Rewrites the version and file name of `package` in every Packages list under `lists`, as a
/// list that was fetched before the mirror replaced that version would read.
fn age_package_in_lists(lists: &Path, package: &str) -> usize {
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
            if !stanza.starts_with(&format!("Package: {package}\n")) {
                continue;
            }
            *stanza = stanza
                .lines()
                .map(|l| {
                    if l.starts_with("Version: ") {
                        "Version: 0.0.1-gone".to_string()
                    } else if let Some(f) = l.strip_prefix("Filename: ") {
                        let dir = f.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                        format!("Filename: {dir}/{package}_0.0.1-gone_amd64.deb")
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
    let aged = age_package_in_lists(&debs.lists_dir(), "hello");
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
