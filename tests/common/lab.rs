//! The guest lab: a user-mode-linux kernel booted as an ordinary process, with the host's `/`
//! as its read-only root, `vsock_loopback` loaded, running one program (a test binary in its
//! guest role) as init's only job. Real AF_VSOCK between processes in the guest (CID 1), never
//! on the machine itself.
//!
//! The kernel comes from Debian's `user-mode-linux` package and busybox (for mount, insmod, ip,
//! poweroff) from `busybox-static`, both unpacked into the lab's cache (`debs`), never taken
//! from the machine's installs.
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

use super::debs::DebRoot;

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

/// The Debian packages both labs unpack, under `$VSPLICE_LAB_DIR/debs` (see `debs`).
pub fn deb_root() -> DebRoot {
    DebRoot::new(&lab_dir().join("debs"))
}

/// Debian unstable's user-mode-linux, which boots on AMX hosts, under
/// `$VSPLICE_LAB_DIR/unstable`, with the `libc6` it needs; the kernel binary is copied and
/// pointed at that libc with `patchelf` (the system's libc may be older than it needs).
fn unstable_kernel() -> Result<(PathBuf, PathBuf), String> {
    let dir = lab_dir().join("unstable");
    let sid = DebRoot::from_suite(&dir, "sid");
    sid.ensure(&["user-mode-linux", "libc6"])?;
    let modules = modules_under(&sid.root)
        .ok_or_else(|| format!("no UML vsock modules under {}", sid.root.display()))?;
    let kernel = dir.join("linux.uml");
    if !kernel.exists() {
        let debs = deb_root();
        debs.ensure(&["patchelf"])?;
        let lib = sid.path("usr/lib/x86_64-linux-gnu");
        let partial = dir.join("linux.uml.partial");
        std::fs::copy(sid.path("usr/bin/linux.uml"), &partial).map_err(|e| e.to_string())?;
        let out = Command::new(debs.path("usr/bin/patchelf"))
            .arg("--set-interpreter")
            .arg(lib.join("ld-linux-x86-64.so.2"))
            .arg("--set-rpath")
            .arg(&lib)
            .arg(&partial)
            .output()
            .map_err(|e| format!("running patchelf: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "patchelf failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        std::fs::rename(&partial, &kernel).map_err(|e| e.to_string())?;
    }
    Ok((kernel, modules))
}

impl Lab {
    /// Finds a kernel that boots here (a probe boot decides: see the module docs), its vsock
    /// modules and busybox, all unpacked into the lab's cache (once); the machine's own
    /// installs are never used, so nothing depends on them.
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
        let (kernel, modules) = unstable_kernel().map_err(|e| {
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

    /// The kernel of this suite's user-mode-linux package.
    fn prepare_packaged() -> Result<Lab, String> {
        let dir = lab_dir();
        let debs = deb_root();
        debs.ensure(&["user-mode-linux", "busybox-static"])?;
        let kernel = debs.path("usr/bin/linux.uml");
        let modules = modules_under(&debs.root).ok_or_else(|| {
            format!(
                "no UML vsock modules under {} (remove it to fetch again)",
                debs.root.display()
            )
        })?;
        let busybox = debs.path("bin/busybox");
        if !kernel.exists() || !busybox.exists() {
            return Err(format!(
                "{} or {} is missing (remove {} to fetch again)",
                kernel.display(),
                busybox.display(),
                debs.root.display()
            ));
        }
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
        // `VSPLICE_LAB_WRAP="perf record -e cpu-clock:u -k realtime -o FILE --"` runs the
        // kernel under that command (a host-side profile of the guest kernel, which runs as
        // ordinary host processes: `perf/uml-profile.sh`).
        let wrap: Vec<String> = std::env::var("VSPLICE_LAB_WRAP")
            .map(|w| w.split_whitespace().map(String::from).collect())
            .unwrap_or_default();
        let mut command = match wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&self.kernel);
                c
            }
            None => Command::new(&self.kernel),
        };
        let mut child = command
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
