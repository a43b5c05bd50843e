//! Debian packages for the guest labs, unpacked into a cache folder with `apt-get download` and
//! `dpkg -x`, never installed. The labs always run their own unpacked copies, whether or not
//! the machine has the packages installed, so README's `cargo test` needs nothing installed by
//! hand (only `apt-get update` having been run) and behaves the same on every machine.
//!
//! A package unpacked here leaves a marker file `<root>/.vsplice-debs/<name>`, written after
//! `dpkg -x` succeeded, so a run cut short is finished by the next one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to do when `apt-get download` cannot work.
pub const HOW_TO_FETCH: &str = "the test labs fetch their Debian packages with \
`apt-get download` and unpack them with `dpkg -x` (no root needed); run `apt-get update` \
once, or point VSPLICE_LAB_DIR at a folder where an earlier run unpacked them";

/// A folder that Debian packages are unpacked into, side by side, as if it were `/`.
#[derive(Debug, Clone)]
pub struct DebRoot {
    pub root: PathBuf,
    downloads: PathBuf,
    /// A Debian suite other than the system's (`sid`), read through a private apt list under
    /// the cache folder so the system's apt configuration is never touched.
    suite: Option<(String, PathBuf)>,
}

impl DebRoot {
    /// The root `dir/root`; .deb files pass through `dir/downloads`.
    pub fn new(dir: &Path) -> DebRoot {
        DebRoot {
            root: dir.join("root"),
            downloads: dir.join("downloads"),
            suite: None,
        }
    }

    /// As `new`, but packages come from Debian's `suite` (its lists fetched once, privately).
    pub fn from_suite(dir: &Path, suite: &str) -> DebRoot {
        DebRoot {
            suite: Some((suite.to_string(), dir.join("apt"))),
            ..DebRoot::new(dir)
        }
    }

    /// `apt-get`, pointed at the private list of `suite` when this root has one (updated on
    /// first use).
    fn apt_get(&self) -> Result<Command, String> {
        let mut cmd = Command::new("apt-get");
        let Some((suite, apt)) = &self.suite else {
            system_lists_ready()?;
            return Ok(cmd);
        };
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(apt.join(sub)).map_err(|e| e.to_string())?;
        }
        let list = apt.join("sources.list");
        std::fs::write(
            &list,
            format!("deb http://deb.debian.org/debian {suite} main\n"),
        )
        .map_err(|e| e.to_string())?;
        cmd.arg(format!("-oDir::Etc::SourceList={}", list.display()))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg(format!(
                "-oDir::State::Lists={}",
                apt.join("lists").display()
            ))
            .arg(format!("-oDir::Cache={}", apt.join("cache").display()));
        if !apt.join("lists/updated").exists() {
            let mut update = Command::new(cmd.get_program());
            update.args(cmd.get_args()).args(["-q", "update"]);
            let out = update
                .output()
                .map_err(|e| format!("running apt-get update for {suite}: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`apt-get update` of Debian {suite} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            std::fs::write(apt.join("lists/updated"), b"").map_err(|e| e.to_string())?;
        }
        Ok(cmd)
    }

    fn marker(&self, package: &str) -> PathBuf {
        self.root.join(".vsplice-debs").join(package)
    }

    /// Whether `package` was unpacked here.
    pub fn has(&self, package: &str) -> bool {
        self.marker(package).exists()
    }

    /// `root/rel`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    /// Downloads and unpacks those of `packages` not unpacked yet.
    pub fn ensure(&self, packages: &[&str]) -> Result<(), String> {
        let wanted: Vec<&str> = packages.iter().copied().filter(|p| !self.has(p)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&self.downloads);
        std::fs::create_dir_all(&self.downloads)
            .map_err(|e| format!("creating {}: {e}", self.downloads.display()))?;
        std::fs::create_dir_all(self.root.join(".vsplice-debs")).map_err(|e| e.to_string())?;
        let out = self
            .apt_get()?
            .arg("download")
            .args(&wanted)
            .current_dir(&self.downloads)
            .output()
            .map_err(|e| format!("running apt-get: {e}; {HOW_TO_FETCH}"))?;
        if !out.status.success() {
            return Err(format!(
                "`apt-get download {}` failed: {}; {HOW_TO_FETCH}",
                wanted.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let debs: Vec<PathBuf> = std::fs::read_dir(&self.downloads)
            .map_err(|e| e.to_string())?
            .flatten()
            .map(|e| e.path())
            .collect();
        for package in wanted {
            // apt-get names the file `<package>_<version>_<arch>.deb`.
            let prefix = format!("{package}_");
            let deb = debs
                .iter()
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                })
                .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
            let status = Command::new("dpkg")
                .arg("-x")
                .arg(deb)
                .arg(&self.root)
                .status()
                .map_err(|e| format!("running dpkg -x: {e}"))?;
            if !status.success() {
                return Err(format!("dpkg -x {} failed", deb.display()));
            }
            std::fs::write(self.marker(package), b"").map_err(|e| e.to_string())?;
        }
        let _ = std::fs::remove_dir_all(&self.downloads);
        Ok(())
    }

    /// The folders under this root that hold shared libraries, for `LD_LIBRARY_PATH`.
    pub fn library_path(&self) -> String {
        // systemd's programs keep their libsystemd-shared in a private folder.
        [
            "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu/systemd",
        ]
        .iter()
        .map(|d| self.root.join(d))
        .filter(|d| d.is_dir())
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
    }

    /// The shared libraries `binary` needs that neither the machine nor this root provides,
    /// as `ldd` names them.
    pub fn missing_libraries(&self, binary: &Path) -> Result<Vec<String>, String> {
        let out = Command::new("ldd")
            .arg(binary)
            .env("LD_LIBRARY_PATH", self.library_path())
            .output()
            .map_err(|e| format!("running ldd: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("not found"))
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect())
    }

    /// Unpacks the libraries `binary` lacks: the dependencies of `package` (and theirs, level by
    /// level) that the machine does not have installed, until `ldd` finds every library.
    /// Installed packages are left to the machine: unpacking the C library beside the system's
    /// loader would break every program.
    pub fn ensure_libraries(&self, binary: &Path, package: &str) -> Result<(), String> {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut level = vec![package.to_string()];
        seen.insert(package.to_string());
        loop {
            let missing = self.missing_libraries(binary)?;
            if missing.is_empty() {
                return Ok(());
            }
            let mut next = Vec::new();
            for p in &level {
                for dep in depends(p)? {
                    if seen.insert(dep.clone()) && !installed(&dep) {
                        next.push(dep);
                    }
                }
            }
            if next.is_empty() {
                return Err(format!(
                    "{} still lacks {} after unpacking the dependencies of {package}",
                    binary.display(),
                    missing.join(", ")
                ));
            }
            let names: Vec<&str> = next.iter().map(String::as_str).collect();
            self.ensure(&names)?;
            level = next;
        }
    }
}

/// The packages `package` depends on (first choice of each alternative; virtual ones skipped).
/// Makes sure the system's apt has package lists: a fresh machine may have none, and then
/// `apt-get download` finds nothing. As root the lists are fetched once (`apt-get update`,
/// which installs nothing); otherwise the error says what to run.
fn system_lists_ready() -> Result<(), String> {
    static READY: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut ready = READY.lock().unwrap_or_else(|e| e.into_inner());
    if *ready {
        return Ok(());
    }
    let has_lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if !has_lists {
        if !nix::unistd::geteuid().is_root() {
            return Err(format!("apt has no package lists here; {HOW_TO_FETCH}"));
        }
        let out = Command::new("apt-get")
            .args(["-q", "update"])
            .output()
            .map_err(|e| format!("running apt-get update: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`apt-get update` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    *ready = true;
    Ok(())
}

fn depends(package: &str) -> Result<Vec<String>, String> {
    system_lists_ready()?;
    let out = Command::new("apt-cache")
        .args(["depends", "--no-recommends", "--no-suggests", package])
        .output()
        .map_err(|e| format!("running apt-cache: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`apt-cache depends {package}` failed: {}; {HOW_TO_FETCH}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("|Depends: ")
                .or_else(|| l.trim().strip_prefix("Depends: "))
        })
        .filter(|name| !name.starts_with('<'))
        .map(|name| name.split(':').next().unwrap_or(name).to_string())
        .collect())
}

/// Whether dpkg reports `package` as installed on the machine.
fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).ends_with("ok installed"))
        .unwrap_or(false)
}

/// A program from Debian `package`, unpacked into the labs' cache (never installed), with the
/// libraries it lacks: a `Command` that runs it with their `LD_LIBRARY_PATH`. For reference
/// tools the tests compare against (iperf3), so README's `cargo test` needs no install.
pub fn tool(package: &str, binary: &str) -> Result<Command, String> {
    let debs = super::lab::deb_root();
    debs.ensure(&[package])?;
    let path = debs.path(binary);
    debs.ensure_libraries(&path, package)?;
    let mut cmd = Command::new(&path);
    cmd.env("LD_LIBRARY_PATH", debs.library_path());
    Ok(cmd)
}
