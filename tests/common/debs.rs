//! Debian packages for the guest labs, unpacked into a cache folder with `apt-get download` and
//! `dpkg -x`, never installed. The labs always run their own unpacked copies, whether or not
//! the machine has the packages installed, so README's `cargo test` needs nothing installed by
//! hand and behaves the same on every machine. They read private package lists fetched from
//! the machine's Debian mirror, never the machine's own lists (which may be stale or absent),
//! so no `apt-get update` of the machine is needed either.
//!
//! A package unpacked here leaves a marker file `<root>/.vsplice-debs/<name>`, written after
//! `dpkg -x` succeeded, so a run cut short is finished by the next one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What to do when `apt-get download` cannot work.
pub const HOW_TO_FETCH: &str = "the test labs fetch their Debian packages with \
`apt-get download` into private package lists (taken from the machine's apt sources) and \
unpack them with `dpkg -x`; they need the machine's Debian mirror, or VSPLICE_LAB_DIR \
pointing at a folder where an earlier run unpacked them";

/// One apt run at a time on the private lists: tests of one binary fetch side by side.
static APT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One [`DebRoot::ensure`] at a time: each empties and refills the root's one downloads
/// folder, so two side by side (the zsh and fish tests on a fresh lab, seen in CI: "apt-get
/// download fish left no .deb") would delete each other's packages. Separate from
/// [`APT_LOCK`], which `ensure` takes inside it for each apt run.
static ENSURE_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A folder that Debian packages are unpacked into, side by side, as if it were `/`.
///
/// Every root reads its own apt lists, kept under `dir/apt` and fetched on first use: a
/// machine's own lists can be months old and name versions the mirror has since replaced
/// (`apt-get download` then gets 404), and the system's apt state is never touched. The
/// mirror is the one the machine's apt configuration names (see [`machine_sources`]); no
/// registry host is written here. A download that fails refreshes the lists once and tries
/// again.
#[derive(Debug, Clone)]
pub struct DebRoot {
    pub root: PathBuf,
    downloads: PathBuf,
    apt: PathBuf,
    /// A Debian suite other than the machine's (`sid`), on the machine's Debian mirror.
    suite: Option<String>,
}

impl DebRoot {
    /// The root `dir/root`, with the machine's suites; .deb files pass through `dir/downloads`.
    pub fn new(dir: &Path) -> DebRoot {
        DebRoot {
            root: dir.join("root"),
            downloads: dir.join("downloads"),
            apt: dir.join("apt"),
            suite: None,
        }
    }

    /// As `new`, but packages come from Debian's `suite`.
    pub fn from_suite(dir: &Path, suite: &str) -> DebRoot {
        DebRoot {
            suite: Some(suite.to_string()),
            ..DebRoot::new(dir)
        }
    }

    /// The `-o` options that point apt at this root's private configuration and lists.
    fn apt_options(&self) -> Vec<String> {
        let apt = &self.apt;
        vec![
            format!(
                "-oDir::Etc::SourceList={}",
                apt.join("sources.list").display()
            ),
            "-oDir::Etc::SourceParts=/dev/null".to_string(),
            format!("-oDir::State::Lists={}", apt.join("lists").display()),
            format!("-oDir::Cache={}", apt.join("cache").display()),
            // Downloads land in a folder of ours, which apt's sandbox user cannot write.
            "-oAPT::Sandbox::User=root".to_string(),
        ]
    }

    /// A `program` (apt-get, apt-cache) reading this root's lists, which are fetched first if
    /// they never were.
    fn apt(&self, program: &str) -> Result<Command, String> {
        let _guard = APT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if !self.apt.join("lists/updated").exists() {
            self.update_lists()?;
        }
        let mut cmd = Command::new(program);
        cmd.args(self.apt_options());
        Ok(cmd)
    }

    /// Writes this root's sources (from the machine's apt configuration) and fetches its
    /// lists with `apt-get update` (which installs nothing).
    fn update_lists(&self) -> Result<(), String> {
        // Lists are fetched anew, never updated in place: apt keeps a list whose release file
        // has not changed, however wrong the list's own contents.
        let _ = std::fs::remove_dir_all(self.apt.join("lists"));
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(self.apt.join(sub)).map_err(|e| e.to_string())?;
        }
        let sources = machine_sources()?;
        let lines = match &self.suite {
            None => sources.iter().map(AptSource::line).collect::<Vec<_>>(),
            Some(suite) => {
                let debian = sources
                    .iter()
                    .find(|s| s.is_debian_archive())
                    .ok_or("the machine's apt configuration names no Debian archive")?;
                vec![
                    AptSource {
                        suites: vec![suite.clone()],
                        components: vec!["main".to_string()],
                        ..debian.clone()
                    }
                    .line(),
                ]
            }
        };
        std::fs::write(self.apt.join("sources.list"), lines.join("\n") + "\n")
            .map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(self.apt.join("lists/updated"));
        let out = Command::new("apt-get")
            .args(self.apt_options())
            .args(["-q", "update"])
            .output()
            .map_err(|e| format!("running apt-get update: {e}"))?;
        // apt-get update exits 0 with only a warning when a source cannot be reached; what
        // matters is that the lists it needs arrived, which the download then shows.
        if !out.status.success() {
            return Err(format!(
                "`apt-get update` of the lab's private lists failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::write(self.apt.join("lists/updated"), b"").map_err(|e| e.to_string())
    }

    /// Where this root keeps its private apt lists (tests age them on purpose).
    pub fn lists_dir(&self) -> PathBuf {
        self.apt.join("lists")
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
        let _one = ENSURE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let wanted: Vec<&str> = packages.iter().copied().filter(|p| !self.has(p)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let _ = std::fs::remove_dir_all(&self.downloads);
        std::fs::create_dir_all(&self.downloads)
            .map_err(|e| format!("creating {}: {e}", self.downloads.display()))?;
        std::fs::create_dir_all(self.root.join(".vsplice-debs")).map_err(|e| e.to_string())?;
        if let Err(first) = self.download(&wanted) {
            // The lists may name versions the mirror no longer has (404): fetch them anew
            // and try once more.
            {
                let _guard = APT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
                self.update_lists()?;
            }
            self.download(&wanted)
                .map_err(|again| format!("{first}; after refreshing the package lists: {again}"))?;
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

    /// `apt-get download` of `packages` into the downloads folder.
    fn download(&self, packages: &[&str]) -> Result<(), String> {
        let out = self
            .apt("apt-get")?
            .arg("download")
            .args(packages)
            .current_dir(&self.downloads)
            .output()
            .map_err(|e| format!("running apt-get: {e}; {HOW_TO_FETCH}"))?;
        if !out.status.success() {
            return Err(format!(
                "`apt-get download {}` failed: {}; {HOW_TO_FETCH}",
                packages.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
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

    /// The packages `package` depends on (first choice of each alternative; virtual ones
    /// skipped), from this root's lists.
    pub fn depends(&self, package: &str) -> Result<Vec<String>, String> {
        let out = self
            .apt("apt-cache")?
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
                for dep in self.depends(p)? {
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

/// `systemd-socket-activate` (Debian package `systemd`; no PID 1 needed): the installed one,
/// or else one unpacked from Debian's package into the labs' cache (this file),
/// run with the library path of its private `libsystemd-shared` (and of any library the
/// machine lacks, unpacked too).
pub fn socket_activate() -> Command {
    static UNPACKED: std::sync::OnceLock<(PathBuf, String)> = std::sync::OnceLock::new();
    if let Some(installed) = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("systemd-socket-activate"))
            .find(|p| p.is_file())
    }) {
        return Command::new(installed);
    }
    // Once per test process: tests run in parallel and unpack into one folder.
    let (binary, library_path) = UNPACKED.get_or_init(|| {
        let debs = super::lab::deb_root();
        debs.ensure(&["systemd"])
            .unwrap_or_else(|e| panic!("systemd-socket-activate is not installed, and {e}"));
        let binary = debs.path("usr/bin/systemd-socket-activate");
        debs.ensure_libraries(&binary, "systemd")
            .unwrap_or_else(|e| panic!("systemd-socket-activate's libraries: {e}"));
        (binary, debs.library_path())
    });
    let mut command = Command::new(binary);
    command.env("LD_LIBRARY_PATH", library_path);
    command
}

/// One `deb` source of the machine's apt configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
    /// `[...]` options of a one-line entry, or `Signed-By:` of a deb822 one.
    pub signed_by: Option<String>,
}

impl AptSource {
    /// The one-line `sources.list` form.
    pub fn line(&self) -> String {
        let opts = match &self.signed_by {
            Some(key) => format!("[signed-by={key}] "),
            None => String::new(),
        };
        format!(
            "deb {opts}{} {} {}",
            self.uri,
            self.suites.join(" "),
            self.components.join(" ")
        )
    }

    /// Whether this is the main Debian archive (not security, not a third party): it has a
    /// suite without a `-` part and a `debian-archive` key, or none named.
    pub fn is_debian_archive(&self) -> bool {
        let main_suite = self
            .suites
            .iter()
            .any(|s| !s.contains('-') && !s.contains('/'));
        let debian_key = self
            .signed_by
            .as_deref()
            .is_none_or(|k| k.contains("debian-archive"));
        main_suite && debian_key && self.uri.trim_end_matches('/').ends_with("/debian")
    }
}

/// The `deb` sources of a deb822 `.sources` file.
pub fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let mut fields = std::collections::HashMap::new();
        let mut last: Option<String> = None;
        for line in stanza.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with(' ') || line.starts_with('\t') {
                // A continuation line (an inline key): keep it with its field.
                if let Some(k) = &last {
                    fields
                        .entry(k.clone())
                        .and_modify(|v: &mut String| v.push_str(line));
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                let key = k.trim().to_ascii_lowercase();
                fields.insert(key.clone(), v.trim().to_string());
                last = Some(key);
            }
        }
        let words = |k: &str| -> Vec<String> {
            fields
                .get(k)
                .map(|v| v.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default()
        };
        if !words("types").iter().any(|t| t == "deb")
            || fields.get("enabled").is_some_and(|v| v == "no")
        {
            continue;
        }
        let signed_by = fields
            .get("signed-by")
            .filter(|v| v.starts_with('/'))
            .cloned();
        for uri in words("uris") {
            out.push(AptSource {
                uri,
                suites: words("suites"),
                components: words("components"),
                signed_by: signed_by.clone(),
            });
        }
    }
    out
}

/// The `deb` lines of a one-line `sources.list`.
pub fn parse_one_line(text: &str) -> Vec<AptSource> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim();
            let (signed_by, rest) = match rest.strip_prefix('[') {
                Some(r) => {
                    let (opts, rest) = r.split_once(']')?;
                    let key = opts
                        .split_whitespace()
                        .find_map(|o| o.strip_prefix("signed-by="))
                        .map(str::to_string);
                    (key, rest.trim())
                }
                None => (None, rest),
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_string();
            let suite = words.next()?.to_string();
            Some(AptSource {
                uri,
                suites: vec![suite],
                components: words.map(str::to_string).collect(),
                signed_by,
            })
        })
        .collect()
}

/// The machine's apt sources, from `/etc/apt/sources.list` and `sources.list.d/` (both forms),
/// as apt itself reads them; the lab fetches from the same mirrors.
pub fn machine_sources() -> Result<Vec<AptSource>, String> {
    let etc = Path::new("/etc/apt");
    let mut sources = Vec::new();
    if let Ok(text) = std::fs::read_to_string(etc.join("sources.list")) {
        sources.extend(parse_one_line(&text));
    }
    let mut parts: Vec<PathBuf> = std::fs::read_dir(etc.join("sources.list.d"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    parts.sort();
    for part in parts {
        let Ok(text) = std::fs::read_to_string(&part) else {
            continue;
        };
        match part.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            Some("list") => sources.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    // The lab wants Debian's packages; other archives (a vendor's) only slow the update.
    sources.retain(|s| s.uri.contains("debian"));
    if sources.is_empty() {
        return Err(format!(
            "the machine's apt configuration names no Debian source; {HOW_TO_FETCH}"
        ));
    }
    Ok(sources)
}
