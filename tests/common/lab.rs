//! The guest lab: a user-mode-linux kernel booted as an ordinary process, with the host's `/`
//! as its read-only root, `vsock_loopback` loaded, running one program (a test binary in its
//! guest role) as init's only job. Real AF_VSOCK between processes in the guest (CID 1), never
//! on the machine itself.
//!
//! The kernel comes from Debian's `user-mode-linux` package: installed (`/usr/bin/linux.uml`)
//! or fetched into a cache folder with `apt-get download` and `dpkg -x`. busybox (for mount,
//! insmod, ip, poweroff) likewise from `busybox-static`.
//!
//! Every kernel is first tried with a probe boot. UML before about 7.0 cannot boot on hosts
//! whose CPUs have AMX (Sapphire Rapids and later): its ptrace of the guest's processes passes
//! an XSAVE buffer sized without the AMX tile state, the host kernel answers EFAULT
//! ("userspace - ptrace set fp regs failed, errno = 14") and init dies. Seen here with Debian
//! 12's 6.1 and Debian 13's 6.12; Debian unstable's 7.2 boots. So when the probe fails the lab
//! fetches `user-mode-linux` and the `libc6` it links against from Debian unstable (a private
//! apt list under the lab folder; the system's apt configuration is not touched) and points
//! the kernel binary at that libc with `patchelf` (from the system's own suite).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Marker line the init script prints with the program's exit status.
const EXIT_MARKER: &str = "VSPLICE-LAB-EXIT";

#[derive(Debug, Clone)]
pub struct Lab {
    kernel: PathBuf,
    modules: PathBuf,
    busybox: PathBuf,
    dir: PathBuf,
}

/// What a guest run printed and how its program ended.
#[derive(Debug)]
pub struct GuestRun {
    pub exit: Option<i32>,
    pub console: String,
    pub elapsed: Duration,
}

fn lab_dir() -> PathBuf {
    std::env::var_os("VSPLICE_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vsplice-lab"))
}

/// The single kernel-version folder under a UML modules root.
fn modules_under(root: &Path) -> Option<PathBuf> {
    let dir = root.join("usr/lib/uml/modules");
    let entry = std::fs::read_dir(&dir).ok()?.flatten().next()?;
    let vsock = entry.path().join("kernel/net/vmw_vsock/vsock_loopback.ko");
    vsock.exists().then(|| entry.path())
}

/// `apt-get download PACKAGE` into `dir`, unpack it under `into` and remove the .deb.
pub fn fetch_package(dir: &Path, package: &str, into: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let out = Command::new("apt-get")
        .args(["download", package])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("running apt-get: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`apt-get download {package}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    unpack_downloaded(dir, package, into)
}

const HOW_TO_FIX: &str = "install the lab's packages with \
`apt-get install user-mode-linux busybox-static` (Debian), or make `apt-get download` work \
(run `apt-get update`), or point VSPLICE_LAB_DIR at a folder holding them unpacked under root/";

/// Debian unstable, where a user-mode-linux that boots on AMX hosts lives.
const UNSTABLE: &str = "deb http://deb.debian.org/debian sid main";

/// `apt-get` with a private source list and state under `dir`, so a package from another
/// suite can be downloaded without touching the system's apt configuration.
fn private_apt(dir: &Path) -> Result<Command, String> {
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| e.to_string())?;
    }
    let list = dir.join("sources.list");
    std::fs::write(&list, format!("{UNSTABLE}\n")).map_err(|e| e.to_string())?;
    let mut cmd = Command::new("apt-get");
    cmd.arg("-q")
        .arg(format!("-oDir::Etc::SourceList={}", list.display()))
        .arg("-oDir::Etc::SourceParts=/dev/null")
        .arg(format!(
            "-oDir::State::Lists={}",
            dir.join("lists").display()
        ))
        .arg(format!("-oDir::Cache={}", dir.join("cache").display()))
        .current_dir(dir);
    Ok(cmd)
}

fn run_ok(mut cmd: Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("running {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{what}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Fetches Debian unstable's user-mode-linux and libc6 under `dir` and returns its kernel,
/// patched to load that libc (the system's may be older than it needs).
fn fetch_unstable_kernel(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let root = dir.join("root");
    let libc = dir.join("libc");
    let kernel = dir.join("linux.uml");
    if kernel.exists() {
        if let Some(m) = modules_under(&root) {
            return Ok((kernel, m));
        }
    }
    let mut update = private_apt(dir)?;
    update.arg("update");
    run_ok(update, "apt-get update (Debian unstable, private list)")?;
    for (package, into) in [("user-mode-linux", &root), ("libc6", &libc)] {
        let mut download = private_apt(dir)?;
        download.args(["download", package]);
        run_ok(
            download,
            &format!("apt-get download {package} (Debian unstable)"),
        )?;
        unpack_downloaded(dir, package, into)?;
    }
    let tools = dir.join("tools");
    if !tools.join("usr/bin/patchelf").exists() {
        fetch_package(dir, "patchelf", &tools)?;
    }
    let lib = libc.join("usr/lib/x86_64-linux-gnu");
    let patched = dir.join("linux.uml.partial");
    std::fs::copy(root.join("usr/bin/linux.uml"), &patched).map_err(|e| e.to_string())?;
    let mut patch = Command::new(tools.join("usr/bin/patchelf"));
    patch
        .arg("--set-interpreter")
        .arg(lib.join("ld-linux-x86-64.so.2"))
        .arg("--set-rpath")
        .arg(&lib)
        .arg(&patched);
    run_ok(patch, "patchelf")?;
    std::fs::rename(&patched, &kernel).map_err(|e| e.to_string())?;
    let modules = modules_under(&root)
        .ok_or_else(|| format!("no UML vsock modules under {}", root.display()))?;
    Ok((kernel, modules))
}

/// Unpacks the `PACKAGE_*.deb` that a download left in `dir` under `into`, then removes it.
fn unpack_downloaded(dir: &Path, package: &str, into: &Path) -> Result<(), String> {
    let deb = std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .ok_or_else(|| format!("apt-get download {package} left no .deb"))?;
    let status = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(into)
        .status()
        .map_err(|e| format!("running dpkg -x: {e}"))?;
    let _ = std::fs::remove_file(&deb);
    if !status.success() {
        return Err(format!("dpkg -x {} failed", deb.display()));
    }
    Ok(())
}

impl Lab {
    /// Finds a kernel that boots here, its vsock modules and busybox, fetching what is
    /// missing (see the module docs for why a kernel may come from Debian unstable).
    pub fn prepare() -> Result<Lab, String> {
        let lab = Lab::prepare_packaged()?;
        let probe = lab.run(
            "probe",
            Path::new("/bin/true"),
            &[],
            Duration::from_secs(60),
        );
        if probe.as_ref().is_ok_and(|r| r.exit == Some(0)) {
            return Ok(lab);
        }
        let why = match probe {
            Ok(r) => r.console,
            Err(e) => e,
        };
        let (kernel, modules) = fetch_unstable_kernel(&lab.dir.join("unstable")).map_err(|e| {
            format!(
                "{} does not boot here and no newer kernel could be fetched ({e}); \
                 its console:\n{why}",
                lab.kernel.display()
            )
        })?;
        Ok(Lab {
            kernel,
            modules,
            ..lab
        })
    }

    /// The kernel of the system's (or this suite's) user-mode-linux package.
    fn prepare_packaged() -> Result<Lab, String> {
        let dir = lab_dir();
        let cache_root = dir.join("root");
        let (kernel, modules) = match (
            Path::new("/usr/bin/linux.uml").exists(),
            modules_under(Path::new("/")),
        ) {
            (true, Some(m)) => (PathBuf::from("/usr/bin/linux.uml"), m),
            _ => {
                let cached_kernel = cache_root.join("usr/bin/linux.uml");
                if !cached_kernel.exists() || modules_under(&cache_root).is_none() {
                    fetch_package(&dir, "user-mode-linux", &cache_root).map_err(|e| {
                        format!("user-mode-linux is not installed and {e}; {HOW_TO_FIX}")
                    })?;
                }
                let modules = modules_under(&cache_root).ok_or_else(|| {
                    format!(
                        "no UML vsock modules under {}; {HOW_TO_FIX}",
                        cache_root.display()
                    )
                })?;
                (cached_kernel, modules)
            }
        };
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let busybox = match busybox {
            Some(b) => b,
            None => {
                let cached = cache_root.join("bin/busybox");
                if !cached.exists() {
                    fetch_package(&dir, "busybox-static", &cache_root)
                        .map_err(|e| format!("busybox is not installed and {e}; {HOW_TO_FIX}"))?;
                }
                if !cached.exists() {
                    return Err(format!("no busybox at {}; {HOW_TO_FIX}", cached.display()));
                }
                cached
            }
        };
        std::fs::create_dir_all(dir.join("run")).map_err(|e| e.to_string())?;
        Ok(Lab {
            kernel,
            modules,
            busybox,
            dir,
        })
    }

    /// Boots a guest that runs `program args...` with `VSPLICE_LAB_GUEST=1` and a writable
    /// tmpfs at /run/lab, then powers off. Kills the guest after `timeout`.
    pub fn run(
        &self,
        name: &str,
        program: &Path,
        args: &[&str],
        timeout: Duration,
    ) -> Result<GuestRun, String> {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let umid = format!("vsplice-{}-{n}", std::process::id());
        let run_dir = self.dir.join("run").join(&umid);
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let b = self.busybox.display();
        let vsock = self.modules.join("kernel/net/vmw_vsock");
        let quoted: Vec<String> = args
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        let script = format!(
            "#!{b} sh\n\
             {b} mount -t proc proc /proc\n\
             {b} mount -t sysfs sys /sys\n\
             {b} mount -t tmpfs run /run\n\
             {b} mkdir -p /run/lab\n\
             {b} insmod {v}/vsock.ko\n\
             {b} insmod {v}/vmw_vsock_virtio_transport_common.ko\n\
             {b} insmod {v}/vsock_loopback.ko\n\
             {b} ip link set lo up\n\
             echo VSPLICE-LAB-BOOTED {name}\n\
             cd /run/lab\n\
             {b} env -i PATH=/usr/bin:/bin HOME=/run/lab TMPDIR=/run/lab VSPLICE_SCRATCH=/run/lab VSPLICE_LAB_GUEST=1 RUST_BACKTRACE=1 '{prog}' {args} 2>&1\n\
             echo {EXIT_MARKER} $?\n\
             {b} poweroff -f\n",
            v = vsock.display(),
            prog = program.display(),
            args = quoted.join(" "),
        );
        let init = run_dir.join("init.sh");
        std::fs::write(&init, script).map_err(|e| e.to_string())?;
        let mut perms = std::fs::metadata(&init)
            .map_err(|e| e.to_string())?
            .permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&init, perms).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut child = Command::new(&self.kernel)
            .arg("mem=768M")
            .arg("rootfstype=hostfs")
            .arg("rootflags=/")
            .arg("ro")
            .arg(format!("init={}", init.display()))
            .arg(format!("uml_dir={}", run_dir.display()))
            .arg(format!("umid={umid}"))
            .args(["con0=null,fd:1", "con=null", "ssl=null", "quiet"])
            .env("TMPDIR", &run_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.kernel.display()))?;
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let mut stderr = child.stderr.take().unwrap();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        let timed_out = loop {
            if child.try_wait().map_err(|e| e.to_string())?.is_some() {
                break false;
            }
            if started.elapsed() > timeout {
                let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
                let _ = child.wait();
                break true;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // UML leaves helper processes in its group; make sure none survive.
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let mut console = reader.join().unwrap_or_default();
        let errors = err_reader.join().unwrap_or_default();
        let _ = std::fs::remove_dir_all(&run_dir);
        if timed_out {
            console.push_str(&format!("\n[lab] guest killed after {timeout:?}\n"));
        }
        if !console.contains("VSPLICE-LAB-BOOTED") {
            return Err(format!(
                "the guest did not boot ({}):\n{console}\n{errors}",
                self.kernel.display()
            ));
        }
        let exit = console
            .lines()
            .find_map(|l| l.strip_prefix(EXIT_MARKER))
            .and_then(|code| code.trim().parse().ok());
        Ok(GuestRun {
            exit,
            console,
            elapsed: started.elapsed(),
        })
    }
}
