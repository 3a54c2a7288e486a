//! The collector harness: a data directory, and while serving, the real collector process.
use crate::*;

/// The addresses in the collector's ready line, `caretaker-collector: grpc=A web=https://B`.
fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix("caretaker-collector: grpc=")?;
    let (grpc, web) = rest.split_once(" web=https://")?;
    Some((grpc.parse().ok()?, web.parse().ok()?))
}

/// A collector data directory and, while serving, its process.
pub struct Collector {
    pub dir: PathBuf,
    pub grpc: SocketAddr,
    pub web: SocketAddr,
    pub proc: Option<Proc>,
}

impl Collector {
    /// `init` in `dir`, then `serve` on loopback ports the collector picks (restarts reuse them).
    pub fn start(dir: &Path) -> Self {
        Self::start_with_names(dir, &[])
    }

    /// As `start`, with the server certificate naming `names` (`init --hostname`).
    pub fn start_with_names(dir: &Path, names: &[&str]) -> Self {
        let args: Vec<&str> = names.iter().flat_map(|n| ["--hostname", n]).collect();
        Self::start_with_init(dir, &args)
    }

    /// As `start`, with extra `init` options (`--store URL`, `--join DIR`, `--hostname`).
    pub fn start_with_init(dir: &Path, init_args: &[&str]) -> Self {
        let mut init = Command::new(bin("caretaker-collector"));
        init.args(["init", "--data-dir"]).arg(dir).args(init_args);
        let (ok, out, err) = run(&mut init);
        assert!(ok, "init failed: {out}{err}");
        let mut c = Collector {
            dir: dir.to_path_buf(),
            // Port 0: the collector binds and reports the ports it got (`serve_through`
            // learns them from its ready line), so no other process can take them between
            // a probe and the bind; restarts then reuse them.
            grpc: "127.0.0.1:0".parse().unwrap(),
            web: "127.0.0.1:0".parse().unwrap(),
            proc: None,
        };
        c.serve();
        c
    }

    /// Starts `serve` and waits until it is listening.
    pub fn serve(&mut self) {
        self.serve_with_env(&[]);
    }

    /// Starts `serve` with extra environment variables (test hooks).
    pub fn serve_with_env(&mut self, env: &[(&str, &str)]) {
        self.serve_with_args(&[], env);
    }

    /// Starts `serve` with extra options and environment variables.
    pub fn serve_with_args(&mut self, args: &[&str], env: &[(&str, &str)]) {
        self.serve_through(
            Command::new(bin("caretaker-collector")),
            args,
            env,
            Stdio::inherit(),
        );
    }

    /// Starts `serve` through `cmd`: the collector itself, or a launcher whose arguments end
    /// with it (such as `prlimit --nofile=N -- caretaker-collector`), with extra options, its
    /// log to `stderr`; waits until it is listening.
    pub fn serve_through(
        &mut self,
        mut cmd: Command,
        args: &[&str],
        env: &[(&str, &str)],
        stderr: impl Into<Stdio>,
    ) {
        assert!(self.proc.is_none(), "already serving");
        let mut child = cmd
            .args(["serve", "--data-dir"])
            .arg(&self.dir)
            .args([
                "--grpc-listen",
                &self.grpc.to_string(),
                "--web-listen",
                &self.web.to_string(),
            ])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let (grpc, web) =
            parse_ready_line(&line).unwrap_or_else(|| panic!("collector did not start: {line:?}"));
        (self.grpc, self.web) = (grpc, web);
        self.proc = Some(Proc {
            child,
            name: "collector".into(),
        });
    }

    pub fn kill9(&mut self) {
        self.proc.take().expect("serving").kill9();
    }

    /// True once the serving process has exited on its own.
    pub fn has_exited(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| p.child.try_wait().ok().flatten().is_some())
    }

    /// Drops the handle of a process that has already exited, so `serve` can start another.
    pub fn forget_process(&mut self) {
        self.proc.take();
    }

    pub fn stop(&mut self) {
        let st = self.proc.take().expect("serving").stop();
        assert!(st.success(), "collector exited with {st}");
    }

    pub fn grpc_addr(&self) -> String {
        format!("localhost:{}", self.grpc.port())
    }

    /// Creates an enrolment token with `token create --json`; returns (token, fingerprint).
    pub fn token(&self, extra: &[&str]) -> (String, String) {
        let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
            .args(["token", "create", "--json", "--data-dir"])
            .arg(&self.dir)
            .args(extra));
        assert!(ok, "token create failed: {err}");
        let v: Value = serde_json::from_str(out.trim()).expect("one JSON line");
        (
            v["token"].as_str().unwrap().into(),
            v["ca_fingerprint"].as_str().unwrap().into(),
        )
    }

    /// Adds a dashboard account with `user add --password-stdin`; returns its password.
    pub fn add_user(&self, role: &str, username: &str) -> String {
        use std::io::Write;
        let password = format!("{username}-pass-0123456789");
        let mut child = Command::new(bin("caretaker-collector"))
            .args([
                "user",
                "add",
                "--role",
                role,
                "--username",
                username,
                "--password-stdin",
                "--data-dir",
            ])
            .arg(&self.dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "user add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        password
    }

    /// Creates an API token with a role (`token create-api`); returns the token.
    pub fn api_token(&self, role: &str) -> String {
        let (ok, out, err) = run(Command::new(bin("caretaker-collector"))
            .args([
                "token",
                "create-api",
                "--role",
                role,
                "--label",
                &format!("test {role}"),
                "--data-dir",
            ])
            .arg(&self.dir));
        assert!(ok, "token create-api failed: {err}");
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with("cta_"))
            .expect("the token line")
            .to_string()
    }

    pub fn api(&self) -> Api {
        Api::new(
            &format!("https://localhost:{}", self.web.port()),
            std::fs::read_to_string(self.dir.join("admin.token"))
                .unwrap()
                .trim(),
            &std::fs::read(self.dir.join("ca.pem")).unwrap(),
        )
    }

    /// Enrols an agent state dir; panics on failure.
    pub fn enroll(&self, state: &Path) -> String {
        let (token, fp) = self.token(&[]);
        let (ok, out, err) = run(Command::new(bin("caretaker-agent"))
            .args([
                "enroll",
                "--collector",
                &self.grpc_addr(),
                "--token",
                &token,
                "--ca-fingerprint",
                &fp,
                "--state-dir",
            ])
            .arg(state));
        assert!(ok, "enroll failed: {out}{err}");
        let e: Value =
            serde_json::from_slice(&std::fs::read(state.join("enrollment.json")).unwrap()).unwrap();
        e["device_id"].as_str().unwrap().to_string()
    }
}
