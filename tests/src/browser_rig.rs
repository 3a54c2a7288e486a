//! A real headless Chromium driven over WebDriver (chromedriver + fantoccini), for the dashboard's end-to-end tests.
//!
//! The API is blocking: [`Browser`] owns a single-threaded tokio runtime and blocks on each
//! WebDriver command, like the harness's [`Api`](crate::Api). Tests are plain `#[test]`s, not
//! `#[tokio::test]`: `Api` blocks on its own runtime, which would panic inside another one.
//!
//! ```no_run
//! use std::time::Duration;
//! use caretaker_tests::{Collector, browser_rig::Browser};
//!
//! let tmp = tempfile::tempdir().unwrap();
//! let collector = Collector::start(&tmp.path().join("collector"));
//! let browser = Browser::start();
//! browser.goto(&format!("https://127.0.0.1:{}/", collector.web.port()));
//! // A sign-in form, say:
//! browser.fill("input[name=token]", "secret");
//! browser.click("button[type=submit]");
//! browser.wait_for_text("body", "Devices", Duration::from_secs(10));
//! browser.screenshot("dashboard-devices");
//! ```
//!
//! Every browser gets its own temporary profile (`--user-data-dir`), so tests share no cookies.
//! Chromium accepts any certificate (`acceptInsecureCerts`): the collector's is issued by its
//! own school CA. WebDriver cannot report a response's HTTP status; check those with reqwest.
//!
//! Needs (Debian): chromium, chromium-driver, and fonts-dejavu-core so screenshots show text;
//! `scripts/install-test-deps.sh` installs them. chromedriver runs in its own process group,
//! and the whole group (Chromium included) is killed when the [`Browser`] drops, on panic too.

use std::future::Future;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::{Proc, bin_dir, free_port};

/// How long chromedriver may take to listen, and Chromium to open a session.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// WebDriver's own limit on a page load, so a hung page fails the command instead of the test run.
const PAGE_LOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// A cookie as the browser holds it, with the attributes a session cookie is judged by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    /// "Strict", "Lax" or "None", as the browser reports it.
    pub same_site: Option<String>,
}

/// A headless Chromium session. Dropping it ends the session and kills chromedriver and Chromium.
pub struct Browser {
    client: Client,
    rt: tokio::runtime::Runtime,
    driver: Option<Proc>,
    /// chromedriver's output, shown when starting fails.
    driver_log: PathBuf,
    closed: bool,
    /// Holds the profile and the log; dropped after the processes are gone.
    _dir: tempfile::TempDir,
}

/// The first `name` on `$PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn require(name: &str) -> PathBuf {
    on_path(name).unwrap_or_else(|| {
        panic!(
            "{name} is not on PATH: run scripts/install-test-deps.sh (Debian's chromium and chromium-driver)"
        )
    })
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// SIGKILL to every process in the group led by `pgid`, which chromedriver's Chromium inherits.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a headless Chromium session
    /// with a 1280×900 window. Panics with chromedriver's log if either fails to start.
    pub fn start() -> Self {
        use std::os::unix::process::CommandExt;

        let chromedriver = require("chromedriver");
        let chromium = require("chromium");
        let dir = tempfile::tempdir().expect("tempdir");
        let profile = dir.path().join("profile");
        let driver_log = dir.path().join("chromedriver.log");
        let log = std::fs::File::create(&driver_log).expect("chromedriver log");
        let port = free_port();
        let child = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            // Its own group, so drop can kill Chromium and its helpers with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", chromedriver.display()));
        let mut driver = Proc {
            child,
            name: "chromedriver".into(),
        };

        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = driver.child.try_wait().expect("chromedriver status") {
                panic!(
                    "chromedriver exited with {st} before listening on port {port}:\n{}",
                    log_tail(&driver_log)
                );
            }
            assert!(
                start.elapsed() < START_TIMEOUT,
                "chromedriver did not listen on port {port} within {START_TIMEOUT:?}:\n{}",
                log_tail(&driver_log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }

        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "timeouts": { "pageLoad": PAGE_LOAD_TIMEOUT.as_millis() as u64 },
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        });
        let caps = match caps {
            serde_json::Value::Object(m) => m,
            _ => unreachable!("an object literal"),
        };

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let pgid = driver.child.id();
        let connect = rt.block_on(async {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            tokio::time::timeout(
                START_TIMEOUT,
                ClientBuilder::new(connector)
                    .capabilities(caps)
                    .connect(&format!("http://127.0.0.1:{port}")),
            )
            .await
        });
        let client = match connect {
            Ok(Ok(client)) => client,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no session within {START_TIMEOUT:?}"),
                };
                // `driver` reaps chromedriver as the panic unwinds.
                kill_group(pgid);
                panic!(
                    "Chromium did not start under chromedriver: {why}\n{}",
                    log_tail(&driver_log)
                );
            }
        };
        Browser {
            client,
            rt,
            driver: Some(driver),
            driver_log,
            closed: false,
            _dir: dir,
        }
    }

    /// The fantoccini client, for anything the helpers below do not cover (use with [`block_on`](Self::block_on)).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Runs a future on the browser's runtime, e.g. `b.block_on(b.client().back())`.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Signs in on the dashboard at `base` (does not wait for the next page).
    pub fn sign_in(&self, base: &str, user: &str, password: &str) {
        self.goto(&format!("{base}/signin"));
        self.fill("#username", user);
        self.fill("#password", password);
        self.click("form[action='/signin'] button[type=submit]");
    }

    /// Signs out and waits for the sign-in page.
    pub fn sign_out(&self) {
        self.click("form[action='/signout'] button");
        self.wait_for_text("h1", "Sign in", Duration::from_secs(10));
    }

    /// The dashboard session cookie, as a `Cookie:` header value for direct requests; checks
    /// it is Secure and HttpOnly.
    pub fn session_cookie(&self) -> String {
        let c = self
            .cookies()
            .into_iter()
            .find(|c| c.name == "__Host-caretaker")
            .expect("signed in: a session cookie");
        assert!(
            c.secure && c.http_only,
            "the session cookie is Secure and HttpOnly"
        );
        format!("{}={}", c.name, c.value)
    }

    /// Navigates to `url` and waits for the page to load.
    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.client.goto(url))
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    fn find(&self, css: &str) -> fantoccini::elements::Element {
        self.rt
            .block_on(self.client.find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("no element matches {css:?} on {}: {e}", self.current_url()))
    }

    /// Replaces the value of the input matching `css` with `text`, as typed keys.
    pub fn fill(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.rt
            .block_on(async {
                el.clear().await?;
                el.send_keys(text).await
            })
            .unwrap_or_else(|e| panic!("fill {css:?}: {e}"));
    }

    /// Clicks the first element matching `css`.
    pub fn click(&self, css: &str) {
        let el = self.find(css);
        self.rt
            .block_on(el.click())
            .unwrap_or_else(|e| panic!("click {css:?}: {e}"));
    }

    /// The rendered (visible) text of the first element matching `css`.
    pub fn text(&self, css: &str) -> String {
        let el = self.find(css);
        self.rt
            .block_on(el.text())
            .unwrap_or_else(|e| panic!("text of {css:?}: {e}"))
    }

    /// How many elements match `css` (0 when none: for asserting something is absent).
    pub fn count(&self, css: &str) -> usize {
        self.rt
            .block_on(self.client.find_all(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("find {css:?}: {e}"))
            .len()
    }

    /// The current document as HTML (the DOM as it is now, not the bytes the server sent).
    pub fn page_source(&self) -> String {
        self.rt
            .block_on(self.client.source())
            .unwrap_or_else(|e| panic!("page source: {e}"))
    }

    pub fn current_url(&self) -> String {
        self.rt
            .block_on(self.client.current_url())
            .map(|u| u.to_string())
            .unwrap_or_else(|e| panic!("current url: {e}"))
    }

    /// Polls the text of `css` (e.g. "body") until it contains `needle`; returns that text.
    /// Panics after `timeout` with the last text seen.
    pub fn wait_for_text(&self, css: &str, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        let mut last = String::from("(no element matched)");
        loop {
            let seen = self.rt.block_on(async {
                let el = self.client.find(Locator::Css(css)).await.ok()?;
                el.text().await.ok()
            });
            if let Some(text) = seen {
                if text.contains(needle) {
                    return text;
                }
                last = text;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting for {needle:?} in {css:?} on {}; last text:\n{last}",
                self.current_url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The cookies visible to the current page.
    pub fn cookies(&self) -> Vec<Cookie> {
        let all = self
            .rt
            .block_on(self.client.get_all_cookies())
            .unwrap_or_else(|e| panic!("cookies: {e}"));
        all.iter()
            .map(|c| Cookie {
                name: c.name().to_string(),
                value: c.value().to_string(),
                path: c.path().map(str::to_string),
                secure: c.secure().unwrap_or(false),
                http_only: c.http_only().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()),
            })
            .collect()
    }

    /// Saves the viewport as `<workspace>/target/screenshots/<name>.png` and returns the path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        assert!(
            !name.is_empty() && !name.contains(['/', '\\']),
            "screenshot name {name:?} must be a plain file name"
        );
        let png = self
            .rt
            .block_on(self.client.screenshot())
            .unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Resizes the window, e.g. to 390×844 for a phone-width screenshot.
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.rt
            .block_on(self.client.set_window_size(width, height))
            .unwrap_or_else(|e| panic!("set window size {width}x{height}: {e}"));
    }

    /// Ends the session (Chromium quits) and panics if that fails; then chromedriver is killed.
    /// chromedriver has no clean stop on SIGTERM, so there is no exit status worth checking.
    pub fn close(mut self) {
        self.closed = true;
        self.rt
            .block_on(self.client.clone().close())
            .unwrap_or_else(|e| panic!("close the session: {e}\n{}", log_tail(&self.driver_log)));
        // Drop kills the process group and reaps chromedriver.
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.closed {
            // Best effort: tell Chromium to quit, but never hang a failing test on it.
            let session = self.client.clone().close();
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(5), session).await });
        }
        if let Some(driver) = &self.driver {
            kill_group(driver.child.id());
        }
        // `driver` (a `Proc`) then reaps chromedriver; `_dir` removes the profile.
    }
}

/// `<workspace>/target/screenshots`: beside the profile directory (`debug`, `release`) holding the binaries.
pub fn screenshot_dir() -> PathBuf {
    let profile = bin_dir();
    profile.parent().unwrap_or(&profile).join("screenshots")
}
