//! Test-support rig: boots Debian's own kernel under QEMU (TCG, PVH vmlinux) with a busybox
//! initramfs that runs one static test binary, and hot-plugs USB sticks over QMP.
//!
//! Host packages it needs (it installs nothing itself; CI installs them):
//!   apt-get install -y -t bookworm-backports qemu-system-x86 qemu-utils seabios
//!   apt-get install -y busybox-static kmod xz-utils dosfstools mtools binutils
//! (bookworm's own qemu-system-x86 would remove the preinstalled backported qemu-utils.)
//! The kernel is fetched once with `apt-get download` (the linux-image-6.1.*-amd64 package that
//! linux-image-amd64 depends on), unpacked with `dpkg-deb -x`, and cached with the decompressed
//! vmlinux under $CARETAKER_VMCACHE (default /work/scratch/vmcache).
//!
//! The guest: q35, 512 MiB, qemu-xhci, virtio-net with QEMU user networking (the guest is
//! 10.0.2.15 and reaches the host's loopback at 10.0.2.2), serial console captured in memory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// Kernel modules the guest loads, with their dependencies resolved in load order by modprobe.
const MODULES: &[&str] = &[
    "usb-storage",
    "sd_mod",
    "xhci-pci",
    "vfat",
    "nls_iso8859-1",
    "nls_cp437",
    "virtio_pci",
    "virtio_net",
    "usbhid",
    "hid-generic",
];

pub fn cache_dir() -> PathBuf {
    std::env::var_os("CARETAKER_VMCACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/vmcache"))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The unpacked kernel: decompressed vmlinux and its module tree.
pub struct Kernel {
    pub version: String,
    pub vmlinux: PathBuf,
    pub root: PathBuf,
}

/// Fetches (once) and unpacks Debian's kernel into the cache.
pub fn kernel() -> Kernel {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache).unwrap();
    let root = cache.join("kroot");
    if !root.join("boot").exists() {
        let deps = run(Command::new("apt-cache").args(["depends", "linux-image-amd64"]));
        let pkg = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-6"))
            .expect("linux-image-amd64 depends on a versioned image")
            .to_owned();
        run(Command::new("apt-get")
            .args(["download", &pkg])
            .current_dir(&cache));
        let deb = std::fs::read_dir(&cache)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "deb") && p.to_string_lossy().contains(&pkg)
            })
            .expect("downloaded .deb");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    }
    let version = std::fs::read_dir(root.join("lib/modules"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .expect("a module tree");
    if !root
        .join("lib/modules")
        .join(&version)
        .join("modules.dep")
        .exists()
    {
        run(Command::new("depmod").arg("-b").arg(&root).arg(&version));
    }
    let vmlinux = cache.join(format!("vmlinux-{version}"));
    if !vmlinux.exists() {
        // bzImage = setup code + compressed payload; find the XZ stream and decompress it once.
        // Booting this ELF directly (PVH) skips the in-guest decompression: ~6 s under TCG.
        let bz = std::fs::read(root.join(format!("boot/vmlinuz-{version}"))).unwrap();
        let magic = [0xFD, b'7', b'z', b'X', b'Z', 0x00];
        let at = bz
            .windows(6)
            .position(|w| w == magic)
            .expect("XZ payload in bzImage");
        let mut xz = Command::new("xz")
            .args(["-dc", "--single-stream"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("xz installed");
        let mut stdin = xz.stdin.take().unwrap();
        let payload = bz[at..].to_vec();
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&payload);
        });
        let out = xz.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.stdout.starts_with(b"\x7fELF"), "vmlinux is an ELF");
        let tmp = vmlinux.with_extension("tmp");
        std::fs::write(&tmp, &out.stdout).unwrap();
        std::fs::rename(&tmp, &vmlinux).unwrap();
    }
    Kernel {
        version,
        vmlinux,
        root,
    }
}

/// Module files in load order (dependencies first, no duplicates).
fn module_files(k: &Kernel) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for m in MODULES {
        let deps = run(Command::new("modprobe").arg("-d").arg(&k.root).args([
            "-S",
            &k.version,
            "--show-depends",
            m,
        ]));
        for l in deps.lines() {
            if let Some(p) = l.strip_prefix("insmod ") {
                let p = PathBuf::from(p.split_whitespace().next().unwrap());
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// Minimal "newc" cpio writer (the initramfs format), so the host needs no cpio tool.
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn new() -> Self {
        Self {
            buf: Vec::new(),
            ino: 1,
        }
    }
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.buf.extend(header.as_bytes());
        self.buf.extend(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend(data);
        self.pad();
    }
    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, &[], (0, 0));
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, 0o100000 | mode, data, (0, 0));
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.buf
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A file placed in the guest: path (no leading slash), mode, contents.
pub type GuestFile = (String, u32, Vec<u8>);

/// Builds the initramfs: busybox, modules, `/init`, extra files, and the test binary (stripped copy) at /testbin.
pub fn initramfs(k: &Kernel, binary: &Path, args: &[&str], files: &[GuestFile], out: &Path) {
    let mut c = Cpio::new();
    for d in [
        "bin", "dev", "proc", "sys", "tmp", "run", "mnt", "modules", "etc",
    ] {
        c.dir(d);
    }
    let mut made = std::collections::BTreeSet::new();
    for (path, mode, data) in files {
        let mut parent = Path::new(path).parent();
        let mut parents = Vec::new();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            parents.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        for p in parents.into_iter().rev() {
            if made.insert(p.clone()) {
                c.dir(&p);
            }
        }
        c.file(path, *mode, data);
    }
    c.entry("dev/console", 0o020600, &[], (5, 1));
    c.file(
        "bin/busybox",
        0o755,
        &std::fs::read("/bin/busybox").expect("busybox-static installed"),
    );
    for (i, m) in module_files(k).iter().enumerate() {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        c.file(
            &format!("modules/{i:02}-{name}"),
            0o644,
            &std::fs::read(m).unwrap(),
        );
    }
    let stripped = out.with_extension("bin");
    run(Command::new("strip").arg("-o").arg(&stripped).arg(binary));
    c.file("testbin", 0o755, &std::fs::read(&stripped).unwrap());
    let argv: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    let init = format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in /modules/*.ko; do
  case "$m" in *usb-storage.ko) insmod "$m" delay_use=0 ;; *) insmod "$m" 2>/dev/null ;; esac
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/24 dev eth0
ip route add default via 10.0.2.2
echo RIG-BOOTED
# Report each USB device's authorisation on the console whenever it changes: the test's
# view of the guest's sysfs (`USBAUTH <serial> <authorized>`).
(last=""; while true; do
  now=""
  for d in /sys/bus/usb/devices/*; do
    [ -f "$d/serial" ] && [ -f "$d/authorized" ] && now="$now $(cat "$d/serial")=$(cat "$d/authorized")"
  done
  if [ "$now" != "$last" ]; then
    for kv in $now; do echo "USBAUTH ${{kv%%=*}} ${{kv#*=}}"; done
    last="$now"
  fi
  sleep 0.2
done) &
# A stand-in for a desktop's automounter (udisks): sticks whose serial starts DESKTOP- are
# mounted read-only at /media/<serial> soon after their disk appears.
mkdir -p /media
(while true; do
  for b in /sys/block/sd*; do
    [ -e "$b" ] || continue
    s=$(cat "$b/device/../../../../serial" 2>/dev/null) || continue
    case "$s" in DESKTOP-*) ;; *) continue ;; esac
    dev=/dev/${{b##*/}}
    grep -q "^$dev " /proc/mounts && continue
    mkdir -p "/media/$s"
    mount -t vfat -o ro,iocharset=iso8859-1 "$dev" "/media/$s" && echo "AUTOMOUNT $s $dev"
  done
  sleep 0.2
done) &
/testbin {}
echo RIG-EXIT $?
poweroff -f
"#,
        argv.join(" ")
    );
    c.file("init", 0o755, init.as_bytes());
    std::fs::write(out, c.finish()).unwrap();
}

/// A QMP connection (JSON lines; asynchronous events are kept).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

impl Qmp {
    fn connect(path: &Path, child: &mut Child) -> Self {
        let start = Instant::now();
        let stream = loop {
            if let Ok(s) = UnixStream::connect(path) {
                break s;
            }
            if let Ok(Some(st)) = child.try_wait() {
                panic!("qemu exited early: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "QMP socket never appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut q = Self {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            events: Vec::new(),
        };
        q.line(); // greeting
        q.cmd("qmp_capabilities", json!({}));
        q
    }
    fn line(&mut self) -> Value {
        let mut l = String::new();
        self.reader.read_line(&mut l).expect("QMP read");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("QMP line {l:?}: {e}"))
    }
    fn cmd(&mut self, execute: &str, arguments: Value) -> Value {
        let msg = json!({"execute": execute, "arguments": arguments});
        self.writer
            .write_all(format!("{msg}\n").as_bytes())
            .unwrap();
        loop {
            let v = self.line();
            if let Some(e) = v.get("error") {
                panic!("QMP {execute} failed: {e}");
            }
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            self.events.push(v);
        }
    }
    fn wait_event(&mut self, name: &str, device: &str) {
        let matches = |v: &Value| v["event"] == name && v["data"]["device"] == device;
        if let Some(i) = self.events.iter().position(matches) {
            self.events.remove(i);
            return;
        }
        loop {
            let v = self.line();
            if matches(&v) {
                return;
            }
            self.events.push(v);
        }
    }
}

/// A running guest; QEMU is killed on drop.
pub struct Vm {
    child: Child,
    qmp: Qmp,
    serial: Arc<Mutex<String>>,
    _dir: tempfile::TempDir,
    plugged: Vec<(String, String)>,
    next: u32,
    // Dropped after QEMU is killed (fields drop after Drop::drop runs).
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

/// QEMU TCG takes a whole core and the machine has two: never run guests in parallel.
static ONE_VM: Mutex<()> = Mutex::new(());

impl Vm {
    /// Boots a guest whose /init runs `binary args...` after loading modules and networking.
    pub fn boot(binary: &Path, args: &[&str]) -> Vm {
        Self::boot_with_files(binary, args, &[])
    }

    /// Boots with extra files in the guest (state, configuration).
    pub fn boot_with_files(binary: &Path, args: &[&str], files: &[GuestFile]) -> Vm {
        let guard = ONE_VM.lock().unwrap_or_else(|p| p.into_inner());
        let k = kernel();
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd.cpio");
        initramfs(&k, binary, args, files, &initrd);
        let qmp_path = dir.path().join("qmp.sock");
        let mut child = Command::new("qemu-system-x86_64")
            .args([
                "-machine",
                "q35,accel=tcg",
                "-cpu",
                "max",
                "-m",
                "512",
                "-smp",
                "1",
            ])
            .args([
                "-display",
                "none",
                "-monitor",
                "none",
                "-serial",
                "stdio",
                "-no-reboot",
            ])
            .arg("-kernel")
            .arg(&k.vmlinux)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 panic=-1 quiet loglevel=3"])
            .args(["-device", "qemu-xhci,id=xhci"])
            .args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
            ])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("qemu-system-x86_64 installed");
        let serial = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().unwrap();
        let s2 = serial.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let qmp = Qmp::connect(&qmp_path, &mut child);
        Vm {
            child,
            qmp,
            serial,
            _dir: dir,
            plugged: Vec::new(),
            next: 0,
            _one_at_a_time: guard,
        }
    }

    /// QEMU's process id (so a harness can kill it by pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Hot-plugs a removable usb-storage device backed by a raw image, with this USB serial.
    pub fn plug_stick(&mut self, image: &Path, serial: &str) {
        self.next += 1;
        let (node, id) = (
            format!("stick{}", self.next),
            format!("usbstick{}", self.next),
        );
        self.qmp.cmd(
            "blockdev-add",
            json!({"node-name": node, "driver": "raw", "file": {"driver": "file", "filename": image}}),
        );
        self.qmp.cmd(
            "device_add",
            json!({"driver": "usb-storage", "id": id, "bus": "xhci.0", "drive": node, "removable": true, "serial": serial}),
        );
        self.plugged.push((id, node));
    }

    /// Hot-plugs a USB keyboard (HID, interface class 3).
    pub fn plug_keyboard(&mut self) {
        self.next += 1;
        let id = format!("usbkbd{}", self.next);
        self.qmp.cmd(
            "device_add",
            json!({"driver": "usb-kbd", "id": id, "bus": "xhci.0"}),
        );
        self.plugged.push((id, String::new()));
    }

    /// Unplugs the most recently plugged stick and waits for QEMU to confirm.
    pub fn unplug(&mut self) {
        let (id, node) = self.plugged.pop().expect("a stick is plugged");
        self.qmp.cmd("device_del", json!({"id": id}));
        self.qmp.wait_event("DEVICE_DELETED", &id);
        if !node.is_empty() {
            self.qmp.cmd("blockdev-del", json!({"node-name": node}));
        }
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn serial_output(&self) -> String {
        self.serial.lock().unwrap().clone()
    }

    /// Waits until the serial output contains `needle` (false on timeout or guest exit).
    pub fn wait_serial(&mut self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.serial.lock().unwrap().contains(needle) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return self.serial.lock().unwrap().contains(needle);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A FAT16 image of `size_mib` with a label and the given files (needs dosfstools and mtools).
pub fn make_stick_image(path: &Path, size_mib: u64, label: &str, files: &[(&str, &[u8])]) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size_mib * 1024 * 1024).unwrap();
    drop(f);
    run(Command::new("mkfs.vfat").args(["-n", label]).arg(path));
    let tmp = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let p = tmp.path().join(name);
        std::fs::write(&p, data).unwrap();
        run(Command::new("mcopy")
            .arg("-i")
            .arg(path)
            .arg(&p)
            .arg(format!("::{name}")));
    }
}
