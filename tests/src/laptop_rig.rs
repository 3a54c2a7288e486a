//! Test laptops for the roll-out and packaging tests: network namespaces on a private bridge, each
//! with its own hostname, process tree, copy-on-write root and its own `sshd`.
//!
//! Topology, all inside namespaces this rig creates (nothing is added to the machine's own
//! network namespace): a "school network" namespace holds a bridge with 10.213.0.1/24 (where the
//! test runs the collector and `caretaker-installer rollout`), and each laptop namespace holds
//! one end of a veth pair whose other end is on that bridge, with 10.213.0.(10+i).
//!
//! Each laptop's root is this machine's own Debian: `/usr`, `/etc` and `/var` are overlay mounts
//! with the real directories as the read-only lower layer and a per-laptop upper layer in a temp
//! dir, so `dpkg -i` in a laptop changes only that laptop (its own dpkg database included) and
//! setting one up costs no download. The mounts live in a private mount namespace; the laptop's
//! `sshd` runs chrooted into the root as PID 1 of its own PID namespace, so killing it ends every
//! process the laptop started (agents included).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::wait_for;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// The first three octets of the private network inside the namespaces.
pub const NET: &str = "10.213.0";

fn unique(kind: &str) -> String {
    format!(
        "ct{kind}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

fn sh(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

/// The school network: a namespace with a bridge the laptops plug into.
pub struct Network {
    pub ns: String,
    pub addr: Ipv4Addr,
    next_laptop: AtomicU32,
}

impl Network {
    pub fn new() -> Self {
        crate::require_root("make network namespaces with `ip netns` and run sshd in them");
        let ns = unique("net");
        ip(&["netns", "add", &ns]);
        let n = |args: &[&str]| {
            let mut v = vec!["-n", ns.as_str()];
            v.extend_from_slice(args);
            ip(&v);
        };
        n(&["link", "set", "lo", "up"]);
        n(&["link", "add", "br0", "type", "bridge"]);
        n(&["addr", "add", &format!("{NET}.1/24"), "dev", "br0"]);
        n(&["link", "set", "br0", "up"]);
        Self {
            ns,
            addr: format!("{NET}.1").parse().unwrap(),
            next_laptop: AtomicU32::new(10),
        }
    }

    /// A command run inside the school network namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(program);
        c
    }

    /// An address on the bridge's network with nothing behind it: a laptop that is switched off.
    pub fn unused_address(&self) -> Ipv4Addr {
        format!("{NET}.250").parse().unwrap()
    }

    /// A laptop plugged into this network, running sshd that accepts `authorized_key`.
    pub fn laptop(&self, name: &str, authorized_key: &str) -> Laptop {
        let i = self.next_laptop.fetch_add(1, Ordering::SeqCst);
        Laptop::start(self, name, i, authorized_key)
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// One laptop: its namespace, root and sshd.
pub struct Laptop {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    /// Holds the overlay layers and the root's skeleton; removed on drop.
    pub dir: tempfile::TempDir,
    root: PathBuf,
    init: Child,
    /// PID (in this machine's namespace) of the laptop's PID 1, the chrooted sshd.
    pub pid: u32,
}

impl Laptop {
    fn start(net: &Network, name: &str, i: u32, authorized_key: &str) -> Self {
        let ns = unique("lap");
        ip(&["netns", "add", &ns]);
        let addr: Ipv4Addr = format!("{NET}.{i}").parse().unwrap();
        let host_end = format!("v{i}-{}", std::process::id() % 10000);
        ip(&[
            "-n", &net.ns, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        ip(&[
            "-n", &net.ns, "link", "set", &host_end, "master", "br0", "up",
        ]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);

        let dir = tempfile::Builder::new()
            .prefix("laptop-")
            .tempdir_in("/tmp")
            .unwrap();
        let root = dir.path().join("root");
        for d in ["usr", "etc", "var"] {
            for layer in ["upper", "work"] {
                std::fs::create_dir_all(dir.path().join(layer).join(d)).unwrap();
            }
        }
        for d in [
            "usr",
            "etc",
            "var",
            "proc",
            "dev",
            "sys",
            "run",
            "tmp",
            "home",
            "root/.ssh",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (link, to) in [
            ("bin", "usr/bin"),
            ("sbin", "usr/sbin"),
            ("lib", "usr/lib"),
            ("lib64", "usr/lib64"),
        ] {
            std::os::unix::fs::symlink(to, root.join(link)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777))
            .unwrap();
        std::fs::set_permissions(root.join("root"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        std::fs::write(root.join("root/.ssh/authorized_keys"), authorized_key).unwrap();
        // sshd's own config and host key, in the laptop's /etc (the upper layer).
        let conf = dir.path().join("upper/etc/ssh/caretaker-test");
        std::fs::create_dir_all(&conf).unwrap();
        let (ok, _, err) = crate::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(conf.join("host_key")),
        );
        assert!(ok, "ssh-keygen: {err}");
        std::fs::write(
            conf.join("sshd_config"),
            format!(
                "ListenAddress {addr}\nPort 22\nHostKey /etc/ssh/caretaker-test/host_key\nPidFile none\n\
                 UsePAM no\nPermitRootLogin prohibit-password\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n\
                 Subsystem sftp internal-sftp\nLogLevel ERROR\n"
            ),
        )
        .unwrap();

        let d = dir.path().display();
        let r = root.display();
        // sysfs read-only: the agent may look, but a laptop here must never change the machine's devices.
        let script = format!(
            "set -e\n\
             hostname {name}\n\
             for x in usr etc var; do mount -t overlay overlay -o lowerdir=/$x,upperdir={d}/upper/$x,workdir={d}/work/$x {r}/$x; done\n\
             mount -t proc proc {r}/proc\n\
             mount --rbind /dev {r}/dev\n\
             mount -t sysfs -o ro sysfs {r}/sys\n\
             mount -t tmpfs -o mode=0755 tmpfs {r}/run\n\
             mkdir -p {r}/run/sshd {r}/run/lock\n\
             exec chroot {r} /usr/sbin/sshd -D -e -f /etc/ssh/caretaker-test/sshd_config\n"
        );
        let init = Command::new("ip")
            .args(["netns", "exec", &ns, "unshare"])
            .args([
                "--mount",
                "--uts",
                "--pid",
                "--fork",
                "--kill-child",
                "--propagation",
                "private",
                "sh",
                "-c",
            ])
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare");
        let unshare_pid = init.id();
        let pid = wait_for(Duration::from_secs(10), "the laptop's PID 1", || {
            let children =
                std::fs::read_to_string(format!("/proc/{unshare_pid}/task/{unshare_pid}/children"))
                    .ok()?;
            let pid: u32 = children.split_whitespace().next()?.parse().ok()?;
            // Ready once PID 1 is sshd inside the root.
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            (exe.ends_with("sshd")).then_some(pid)
        });
        let mut laptop = Laptop {
            name: name.to_string(),
            ns,
            addr,
            dir,
            root,
            init,
            pid,
        };
        // Listening?
        wait_for(Duration::from_secs(10), "the laptop's sshd", || {
            let out = laptop
                .exec("cat /proc/net/tcp")
                .status
                .success()
                .then(|| laptop.exec("cat /proc/net/tcp").stdout)?;
            String::from_utf8_lossy(&out)
                .lines()
                .any(|l| l.contains(":0016 ") && l.contains(" 0A "))
                .then_some(())
        });
        if let Ok(Some(st)) = laptop.init.try_wait() {
            panic!("laptop {name} stopped at start: {st}");
        }
        laptop
    }

    /// Runs a shell command inside the laptop (its namespaces and root), as root.
    pub fn exec(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args([
                "-t",
                &self.pid.to_string(),
                "-m",
                "-u",
                "-n",
                "-p",
                "-r",
                "-w",
            ])
            .args(["/bin/sh", "-c", script])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .output()
            .expect("nsenter")
    }

    /// As `exec`, panicking with the output if the command fails.
    pub fn exec_ok(&self, script: &str) -> String {
        let out = self.exec(script);
        assert!(
            out.status.success(),
            "{}: `{script}` failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A path inside the laptop's root, readable from the test (through PID 1's root).
    pub fn path(&self, inside: &str) -> PathBuf {
        Path::new(&format!("/proc/{}/root", self.pid)).join(inside.trim_start_matches('/'))
    }

    /// Copies a file from this machine into the laptop.
    pub fn put(&self, from: &Path, inside: &str) {
        std::fs::copy(from, self.path(inside))
            .unwrap_or_else(|e| panic!("copy {} into {}: {e}", from.display(), self.name));
    }

    /// The root's skeleton directory on this machine (not the overlay view: see `path`).
    pub fn skeleton(&self) -> &Path {
        &self.root
    }
}

impl Drop for Laptop {
    fn drop(&mut self) {
        // SIGKILL to unshare: --kill-child takes PID 1 with it, and the kernel every other
        // process of the laptop.
        let _ = self.init.kill();
        let _ = self.init.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// An SSH key pair in `dir`: (private key path, public key line).
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let (ok, _, err) = crate::run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key),
    );
    assert!(ok, "ssh-keygen: {err}");
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    (key, public)
}
