//! The QEMU lab: a full virtio-vsock device for the hybrid-vsock tests. QEMU (software
//! emulation, `-accel tcg`) boots Debian's kernel with an initramfs this fixture writes (busybox,
//! the virtio and vsock modules, the vsplice and test binaries with their shared libraries), and
//! its `vhost-user-vsock-pci` device is served by rust-vmm's `vhost-device-vsock` on the
//! machine. The machine reaches the guest only through that backend's UNIX socket (hybrid
//! vsock), never through AF_VSOCK.
//!
//! The initramfs root is writable as it is; nothing is mounted over /tmp, where a checkout (and
//! so the binaries, stored at their own paths) may live.
//!
//! Setup, cached under `target/vsplice-lab` (or `$VSPLICE_LAB_DIR`), nothing installed into `/`:
//! Debian's `qemu-system-x86` with its firmware, the shared libraries the machine lacks, busybox
//! and the kernel that `linux-image-amd64` points at, all unpacked under `debs/root` (see
//! `debs`); QEMU runs from there with `LD_LIBRARY_PATH` and `QEMU_MODULE_DIR`, and finds its
//! firmware beside its binary. `vhost-device-vsock` comes from crates.io with `cargo install`.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The guest's CID.
pub const GUEST_CID: u32 = 4;

/// vhost-device-vsock version the tests were written against (its behaviour is in docs/hybrid-vsock.md).
pub const BACKEND_VERSION: &str = "0.3.0";

/// Modules to load, in dependency order.
const MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "net/vmw_vsock/vsock.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
];

#[derive(Debug, Clone)]
pub struct QemuLab {
    qemu: PathBuf,
    /// `LD_LIBRARY_PATH` for the unpacked QEMU.
    library_path: String,
    /// `QEMU_MODULE_DIR`: Debian builds the TCG accelerator as a module.
    module_dir: PathBuf,
    kernel: PathBuf,
    modules: PathBuf,
    backend: PathBuf,
    busybox: PathBuf,
    dir: PathBuf,
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(program))
            .find(|p| p.is_file())
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

const HOW: &str = "QEMU, its firmware, busybox and the kernel are fetched with `apt-get download` \
(into the lab's private package lists, from the machine's Debian mirror) and vhost-device-vsock \
with `cargo install`";

impl QemuLab {
    pub fn prepare() -> Result<QemuLab, String> {
        let base = std::env::var_os("VSPLICE_LAB_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vsplice-lab"));
        let dir = base.join("qemu");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let debs = super::lab::deb_root();
        debs.ensure(&[
            "qemu-system-x86",
            "qemu-system-common",
            "qemu-system-data",
            "seabios",
            "busybox-static",
        ])?;
        let qemu = debs.path("usr/bin/qemu-system-x86_64");
        let module_dir = debs.path("usr/lib/x86_64-linux-gnu/qemu");
        let tcg = module_dir.join("accel-tcg-x86_64.so");
        // QEMU looks for its firmware beside its binary: BIN/../share/{qemu,seabios}.
        for needed in [
            qemu.clone(),
            tcg.clone(),
            debs.path("usr/share/qemu/kvmvapic.bin"),
            debs.path("usr/share/qemu/linuxboot_dma.bin"),
            debs.path("usr/share/seabios/bios-256k.bin"),
        ] {
            if !needed.exists() {
                return Err(format!(
                    "{} is missing (remove {} to fetch again)",
                    needed.display(),
                    debs.root.display()
                ));
            }
        }
        debs.ensure_libraries(&qemu, "qemu-system-x86")?;
        debs.ensure_libraries(&tcg, "qemu-system-common")?;
        let library_path = debs.library_path();
        let busybox = debs.path("bin/busybox");
        // The kernel: the version Debian's linux-image-amd64 currently points at.
        let kroot = debs.root.clone();
        let find_kernel = || -> Option<(PathBuf, PathBuf)> {
            let boot = std::fs::read_dir(kroot.join("boot")).ok()?;
            let vmlinuz = boot.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
            })?;
            let version = vmlinuz
                .file_name()?
                .to_str()?
                .strip_prefix("vmlinuz-")?
                .to_string();
            Some((
                vmlinuz,
                kroot.join("lib/modules").join(version).join("kernel"),
            ))
        };
        if find_kernel().is_none() {
            // Asked of the lab's own lists, as every package here: the machine's may be
            // months old (naming a kernel the mirror no longer has) or never fetched.
            let package = debs
                .depends("linux-image-amd64")?
                .into_iter()
                .next()
                .ok_or_else(|| {
                    format!("cannot tell which kernel linux-image-amd64 wants; {HOW}")
                })?;
            debs.ensure(&[&package])?;
        }
        let (kernel, modules) = find_kernel().ok_or("no vmlinuz in the kernel package")?;
        for m in MODULES {
            if !modules.join(m).exists() {
                return Err(format!("the guest kernel lacks {m}"));
            }
        }
        let backend = match which("vhost-device-vsock") {
            Some(b) => b,
            None => {
                let root = dir.join("cargo");
                let bin = root.join("bin/vhost-device-vsock");
                if !bin.exists() {
                    run(
                        Command::new("cargo")
                            .args([
                                "install",
                                "--locked",
                                "vhost-device-vsock",
                                "--version",
                                BACKEND_VERSION,
                                "--root",
                            ])
                            .arg(&root),
                        "cargo install vhost-device-vsock",
                    )
                    .map_err(|e| format!("{e}; {HOW}"))?;
                }
                bin
            }
        };
        Ok(QemuLab {
            qemu,
            library_path,
            module_dir,
            kernel,
            modules,
            backend,
            busybox,
            dir,
        })
    }

    /// Writes an initramfs holding busybox, the modules, `programs` at their own absolute paths
    /// and every shared library they need, and an /init that runs
    /// `PROGRAM --guest SCENARIO` with the scenario taken from the kernel command line.
    pub fn initramfs(&self, program: &Path, extra: &[&Path]) -> Result<PathBuf, String> {
        let mut cpio = Cpio::default();
        for d in [
            "/bin",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/lib",
            "/lib/modules",
            "/run",
        ] {
            cpio.dir(d);
        }
        cpio.file(
            "/bin/busybox",
            &std::fs::read(&self.busybox).map_err(|e| e.to_string())?,
            0o755,
        );
        let mut loads = String::new();
        for m in MODULES {
            let name = Path::new(m).file_name().unwrap().to_str().unwrap();
            let data = std::fs::read(self.modules.join(m)).map_err(|e| e.to_string())?;
            cpio.file(&format!("/lib/modules/{name}"), &data, 0o644);
            loads.push_str(&format!("/bin/busybox insmod /lib/modules/{name}\n"));
        }
        let mut libs = BTreeSet::new();
        let mut binaries: Vec<&Path> = vec![program];
        binaries.extend_from_slice(extra);
        for bin in &binaries {
            let stripped = self.dir.join(format!(
                "stripped-{}",
                bin.file_name().unwrap().to_string_lossy()
            ));
            // Debug symbols would make the initramfs (and the guest's unpacking) huge.
            run(
                Command::new("strip")
                    .arg("--strip-debug")
                    .arg(bin)
                    .arg("-o")
                    .arg(&stripped),
                "strip",
            )?;
            let data = std::fs::read(&stripped).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_file(&stripped);
            cpio.parents(bin);
            cpio.file(bin.to_str().unwrap(), &data, 0o755);
            let ldd = run(Command::new("ldd").arg(bin), "ldd")?;
            for line in ldd.lines() {
                let path = line
                    .split("=>")
                    .nth(1)
                    .unwrap_or(line)
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                if path.starts_with('/') {
                    libs.insert(PathBuf::from(path));
                }
            }
        }
        for lib in libs {
            let real = std::fs::canonicalize(&lib).map_err(|e| e.to_string())?;
            let data = std::fs::read(&real).map_err(|e| e.to_string())?;
            cpio.parents(&lib);
            cpio.file(lib.to_str().unwrap(), &data, 0o755);
        }
        let init = format!(
            "#!/bin/busybox sh\n\
             /bin/busybox mount -t proc proc /proc\n\
             /bin/busybox mount -t sysfs sys /sys\n\
             /bin/busybox mount -t devtmpfs dev /dev\n\
             {loads}\
             /bin/busybox ip link set lo up\n\
             scenario=$(/bin/busybox sed -n 's/.*vsplice.scenario=\\([^ ]*\\).*/\\1/p' /proc/cmdline)\n\
             echo VSPLICE-QEMU-BOOTED $scenario\n\
             cd /tmp\n\
             /bin/busybox env -i PATH=/bin HOME=/tmp TMPDIR=/tmp VSPLICE_SCRATCH=/tmp VSPLICE_LAB_GUEST=1 RUST_BACKTRACE=1 '{}' --guest $scenario 2>&1\n\
             echo VSPLICE-LAB-EXIT $?\n\
             /bin/busybox poweroff -f\n",
            program.display()
        );
        cpio.file("/init", init.as_bytes(), 0o755);
        let out = self
            .dir
            .join(format!("initramfs-{}.cpio", std::process::id()));
        std::fs::write(&out, cpio.finish()).map_err(|e| e.to_string())?;
        Ok(out)
    }

    /// Starts the backend and boots the guest on `initramfs` for `scenario`.
    pub fn boot(&self, initramfs: &Path, scenario: &str) -> Result<Guest, String> {
        let run_dir = self
            .dir
            .join(format!("run-{}-{scenario}", std::process::id()));
        let _ = std::fs::remove_dir_all(&run_dir);
        std::fs::create_dir_all(&run_dir).map_err(|e| e.to_string())?;
        let vhost = run_dir.join("vhost.sock");
        let uds = run_dir.join("host.vsock");
        let backend = Command::new(&self.backend)
            .arg("--guest-cid")
            .arg(GUEST_CID.to_string())
            .arg("--socket")
            .arg(&vhost)
            .arg("--uds-path")
            .arg(&uds)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(run_dir.join("backend.log")).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting vhost-device-vsock: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vhost.exists() {
            if Instant::now() > deadline {
                return Err("vhost-device-vsock did not create its socket".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut qemu = Command::new(&self.qemu)
            .env("LD_LIBRARY_PATH", &self.library_path)
            .env("QEMU_MODULE_DIR", &self.module_dir)
            .args([
                "-accel",
                "tcg",
                "-m",
                "1G",
                "-smp",
                "1",
                "-nodefaults",
                "-no-reboot",
            ])
            .args(["-display", "none", "-monitor", "none", "-serial", "stdio"])
            .args(["-object", "memory-backend-memfd,id=mem,size=1G,share=on"])
            .args(["-machine", "q35,memory-backend=mem"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(initramfs)
            .arg("-append")
            .arg(format!(
                "console=ttyS0 rdinit=/init quiet panic=-1 vsplice.scenario={scenario}"
            ))
            .arg("-chardev")
            .arg(format!("socket,id=v,path={}", vhost.display()))
            .args(["-device", "vhost-user-vsock-pci,chardev=v"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting QEMU: {e}"))?;
        let (tx, lines) = mpsc::channel();
        let stdout = qemu.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stderr = qemu.stderr.take().unwrap();
        let errors = run_dir.join("qemu.err");
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(errors).unwrap();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(f, "{line}");
            }
        });
        Ok(Guest {
            qemu,
            backend,
            lines,
            console: Vec::new(),
            uds,
            run_dir,
        })
    }
}

/// A running guest and its backend.
pub struct Guest {
    qemu: Child,
    backend: Child,
    lines: mpsc::Receiver<String>,
    console: Vec<String>,
    uds: PathBuf,
    run_dir: PathBuf,
}

impl Guest {
    /// The host side of the guest's vsock: the backend's UNIX socket.
    pub fn uds(&self) -> &Path {
        &self.uds
    }

    /// Waits for a console line containing `marker`; returns it.
    pub fn wait_for(&mut self, marker: &str, timeout: Duration) -> Result<String, String> {
        if let Some(l) = self.console.iter().find(|l| l.contains(marker)) {
            return Ok(l.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    println!("[guest] {line}");
                    let hit = line.contains(marker);
                    self.console.push(line.clone());
                    if hit {
                        return Ok(line);
                    }
                    if line.contains("VSPLICE-LAB-EXIT") {
                        return Err(format!(
                            "the guest program ended before printing {marker:?}; console:\n{}",
                            self.console.join("\n")
                        ));
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "guest did not print {marker:?} in {timeout:?}; console:\n{}",
                        self.console.join("\n")
                    ));
                }
            }
        }
    }

    /// Waits for the guest program's exit status and the guest to power off.
    pub fn finish(mut self, timeout: Duration) -> Result<i32, String> {
        let line = self.wait_for("VSPLICE-LAB-EXIT", timeout)?;
        let code = line
            .split_whitespace()
            .last()
            .and_then(|c| c.parse().ok())
            .unwrap_or(-1);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.qemu.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(code)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = self.backend.kill();
        let _ = self.backend.wait();
        let _ = std::fs::remove_dir_all(&self.run_dir);
    }
}

/// A minimal writer of the "newc" cpio format the kernel unpacks as an initramfs.
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    inode: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, body: &[u8]) {
        self.inode += 1;
        let name = name.trim_start_matches('/');
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.inode,
            mode,
            0,
            0,
            1,
            0,
            body.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.data.extend_from_slice(header.as_bytes());
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
        self.data.extend_from_slice(body);
        while self.data.len() % 4 != 0 {
            self.data.push(0);
        }
    }

    fn dir(&mut self, path: &str) {
        if self.dirs.insert(path.to_string()) {
            self.entry(path, 0o040755, &[]);
        }
    }

    /// Creates every parent folder of `path`.
    fn parents(&mut self, path: &Path) {
        let mut acc = PathBuf::from("/");
        if let Some(parent) = path.parent() {
            for part in parent.components().skip(1) {
                acc.push(part);
                self.dir(acc.to_str().unwrap());
            }
        }
    }

    fn file(&mut self, path: &str, body: &[u8], perm: u32) {
        self.entry(path, 0o100000 | perm, body);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}
