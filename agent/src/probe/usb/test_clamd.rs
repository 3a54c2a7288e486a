//! Test support: a real clamd with a one-signature database (the EICAR MD5), so it starts in well
//! under a second. Shared by the library's unit tests (via #[path]) and the VM test.
#![allow(dead_code)]
use std::process::{Child, Command};

/// The EICAR test string, split so this source file is not itself detected.
pub fn eicar() -> String {
    format!(
        "{}{}",
        r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-", "STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    )
}

/// A running test clamd, killed on drop.
pub struct TestClamd {
    child: Child,
    pub dir: tempfile::TempDir,
    /// clamd's unix socket (always).
    pub sock: std::path::PathBuf,
    /// "127.0.0.1:PORT" when started with a TCP port.
    pub tcp: Option<String>,
}

impl TestClamd {
    pub fn start(tcp_port: Option<u16>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        let e = eicar();
        let md5 = Command::new("md5sum")
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(e.as_bytes())?;
                c.wait_with_output()
            });
        let md5 = String::from_utf8(md5.unwrap().stdout).unwrap();
        let md5 = md5.split_whitespace().next().unwrap();
        std::fs::write(
            db.join("test.hdb"),
            format!("{md5}:{}:Caretaker.Test.EICAR\n", e.len()),
        )
        .unwrap();
        let sock = dir.path().join("clamd.sock");
        let mut conf = format!(
            "Foreground yes\nDatabaseDirectory {}\nLocalSocket {}\nUser root\nLogFile {}\nStreamMaxLength 1M\n",
            db.display(),
            sock.display(),
            dir.path().join("log").display()
        );
        let tcp = tcp_port.map(|p| {
            conf.push_str(&format!("TCPSocket {p}\nTCPAddr 127.0.0.1\n"));
            format!("127.0.0.1:{p}")
        });
        std::fs::write(dir.path().join("clamd.conf"), conf).unwrap();
        let child = Command::new("clamd")
            .arg("-c")
            .arg(dir.path().join("clamd.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("clamd installed");
        // Wait for readiness by polling the socket (a readiness wait, not a timing assertion).
        for _ in 0..600 {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            child,
            dir,
            sock,
            tcp,
        }
    }
}

impl Drop for TestClamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
