//! A real SMTP server for digest tests: Debian's aiosmtpd with STARTTLS required and AUTH, its certificate from a test CA, each accepted message saved as a file.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Proc, wait_for};

/// The login the server accepts.
pub const USER: &str = "caretaker";
pub const PASSWORD: &str = "relay-secret-42";

const SERVER: &str = r#"
import asyncio, os, ssl, sys
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, cert, key, outdir, user, password = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]

class Save:
    async def handle_DATA(self, server, session, envelope):
        n = len([f for f in os.listdir(outdir) if f.endswith(".eml")])
        tmp = os.path.join(outdir, "%04d.tmp" % n)
        with open(tmp, "wb") as f:
            f.write(("X-Envelope-To: %s\r\n" % ",".join(envelope.rcpt_tos)).encode())
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(outdir, "%04d.eml" % n))
        return "250 Message accepted for delivery"

def check(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == user.encode() and auth_data.password == password.encode()
    return AuthResult(success=ok)

ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
c = Controller(Save(), hostname="127.0.0.1", port=int(port), server_hostname="localhost",
               tls_context=ctx, require_starttls=True, authenticator=check, auth_required=True)
c.start()
print("ready", flush=True)
try:
    asyncio.get_event_loop().run_forever()
except KeyboardInterrupt:
    pass
"#;

/// An SMTP server on 127.0.0.1 that keeps every message it accepts in `mail_dir`.
pub struct SmtpRig {
    pub port: u16,
    /// The CA that issued the server's certificate (give it to the collector as `ca_file`).
    pub ca_pem: PathBuf,
    pub mail_dir: PathBuf,
    dir: PathBuf,
    proc: Option<Proc>,
}

impl SmtpRig {
    /// Makes a CA and a certificate for "localhost" in `dir`, and starts the server.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Test mail CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("server.py"), SERVER).unwrap();
        let mail_dir = dir.join("mail");
        std::fs::create_dir_all(&mail_dir).unwrap();
        let mut rig = SmtpRig {
            port: crate::free_port(),
            ca_pem: dir.join("ca.pem"),
            mail_dir,
            dir: dir.to_path_buf(),
            proc: None,
        };
        rig.resume();
        rig
    }

    /// Stops the server (connections are refused until `resume`).
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill9();
        }
    }

    /// Starts the server again on the same port.
    pub fn resume(&mut self) {
        assert!(
            Path::new("/usr/bin/python3").exists(),
            "/usr/bin/python3 is missing: run scripts/install-test-deps.sh"
        );
        let d = &self.dir;
        let mut child = Command::new("/usr/bin/python3")
            .arg(d.join("server.py"))
            .arg(self.port.to_string())
            .arg(d.join("server.pem"))
            .arg(d.join("server.key"))
            .arg(&self.mail_dir)
            .args([USER, PASSWORD])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start aiosmtpd (python3-aiosmtpd: run scripts/install-test-deps.sh)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "aiosmtpd did not start");
        self.proc = Some(Proc {
            child,
            name: "aiosmtpd".into(),
        });
    }

    /// Every message accepted so far, as raw text, in order.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.mail_dir)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect()
    }

    /// Waits until at least `n` messages have arrived; returns them all.
    pub fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<String> {
        wait_for(
            timeout,
            &format!("{n} message(s) at the SMTP server"),
            || {
                let m = self.messages();
                (m.len() >= n).then_some(m)
            },
        )
    }
}

/// A header's value from a raw message (the first occurrence, unfolded).
pub fn header(message: &str, name: &str) -> Option<String> {
    let mut lines = message.split("\r\n").peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() {
            return None;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case(name)
        {
            let mut value = v.trim().to_string();
            while lines.peek().is_some_and(|l| l.starts_with([' ', '\t'])) {
                value.push(' ');
                value.push_str(lines.next().unwrap().trim());
            }
            return Some(value);
        }
    }
    None
}
