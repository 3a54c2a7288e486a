//! The monitoring report from the real CLI: a real collector receives a pupil's events from a real enrolled device, and `caretaker-collector report` writes HTML, PDF (headless Chromium) and CSV for governors and the DSL, with the collector running and stopped.
//!
//! The PDF is read back with poppler's `pdftotext` and drawn with `pdftoppm`; the page images
//! land in `target/screenshots/report-*.png`. Needs (Debian): chromium, poppler-utils
//! (`scripts/install-test-deps.sh`). The dashboard's report page is checked in headless
//! Chromium over WebDriver (chromium-driver), as a governor and as the DSL.

use std::path::{Path, PathBuf};
use std::process::Command;

use caretaker_tests::browser_rig::{Browser, screenshot_dir};
use caretaker_tests::{Collector, bin, pb_event, pupil_stick, run, send_as_device};
use serde_json::{Value, json};

const PUPIL: &str = "zz.quillfeather";
const HOST: &str = "QUILL-LAPTOP-7";
const SERIAL: &str = "SN-QUILL-0042";

fn event(seq: u64, kind: &str, user: &str, d: Value) -> caretaker_proto::pb::Event {
    let mut e = pb_event(seq, kind, d.as_object().unwrap().clone());
    e.user = user.into();
    e
}

/// `caretaker-collector report ...`; returns (ok, stdout, stderr).
fn report(dir: &Path, args: &[&str], out: &Path) -> (bool, String, String) {
    run(Command::new(bin("caretaker-collector"))
        .args(["report", "--data-dir"])
        .arg(dir)
        .args(args)
        .arg("--out")
        .arg(out))
}

fn report_ok(dir: &Path, audience: &str, format: &str, out: &Path) {
    let (ok, o, e) = report(
        dir,
        &[
            "--period",
            "week",
            "--audience",
            audience,
            "--format",
            format,
        ],
        out,
    );
    assert!(ok, "report {audience} {format} failed: {o}{e}");
    assert!(o.contains("Wrote"), "{o}");
}

fn pdftotext(pdf: &Path) -> String {
    let (ok, out, err) = run(Command::new("pdftotext")
        .args(["-layout"])
        .arg(pdf)
        .arg("-"));
    assert!(ok, "pdftotext failed (is poppler-utils installed?): {err}");
    out
}

/// Renders every page to `target/screenshots/report-NAME-N.png`; returns the pages drawn.
fn pdftoppm(pdf: &Path, name: &str) -> Vec<PathBuf> {
    let dir = screenshot_dir();
    std::fs::create_dir_all(&dir).unwrap();
    // Pages of an earlier, longer run would linger beside this run's.
    for old in std::fs::read_dir(&dir).unwrap() {
        let old = old.unwrap().path();
        if old
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(&format!("report-{name}-"))
        {
            std::fs::remove_file(old).unwrap();
        }
    }
    let prefix = dir.join(format!("report-{name}"));
    let (ok, _, err) = run(Command::new("pdftoppm")
        .args(["-png", "-r", "70"])
        .arg(pdf)
        .arg(&prefix));
    assert!(ok, "pdftoppm failed: {err}");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("report-{name}-"))
        })
        .collect();
    pages.sort();
    pages
}

/// Every byte of a file or of a directory's files, as text.
fn all_text(p: &Path) -> String {
    if p.is_dir() {
        let mut names: Vec<PathBuf> = std::fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        names.iter().map(|f| all_text(f)).collect()
    } else {
        String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned()
    }
}

/// The number at the end of the first line of `text` containing `label`.
fn figure(text: &str, label: &str) -> String {
    let line = text
        .lines()
        .find(|l| l.contains(label))
        .unwrap_or_else(|| panic!("no line with {label:?} in:\n{text}"));
    line.split_whitespace().last().unwrap().to_string()
}

#[test]
fn governors_get_counts_without_names_and_the_dsl_gets_names_in_html_pdf_and_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("collector");
    let mut collector = Collector::start(&dir);
    let state = tmp.path().join("agent");
    collector.enroll(&state);

    // A pupil tries the same stick three times (one incident, three events) and installs a
    // filter-bypass tool; the laptop locks as the policy says, then can no longer.
    send_as_device(
        &collector,
        &state,
        HOST,
        vec![
            event(1, "screen.compliance", "", json!({"state": "enforced"})),
            event(
                2,
                "antivirus.status",
                "",
                json!({"status": "current", "product": "ClamAV"}),
            ),
            pupil_stick(3, PUPIL, SERIAL),
            pupil_stick(4, PUPIL, SERIAL),
            pupil_stick(5, PUPIL, SERIAL),
            event(
                6,
                "software.installed",
                PUPIL,
                json!({"source": "dpkg", "name": "tor", "version": "1"}),
            ),
            event(
                7,
                "screen.compliance",
                "",
                json!({"state": "cannot_enforce", "reason": "no_idle_source"}),
            ),
            event(
                8,
                "software.installed",
                PUPIL,
                json!({"source": "dpkg", "name": "gimp", "version": "2.10"}),
            ),
        ],
    );

    // With the collector running, the CLI asks it over the admin socket.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    for audience in ["governors", "dsl"] {
        report_ok(
            &dir,
            audience,
            "html",
            &out.join(format!("{audience}.html")),
        );
        report_ok(&dir, audience, "pdf", &out.join(format!("{audience}.pdf")));
        report_ok(&dir, audience, "csv", &out.join(format!("{audience}-csv")));
    }

    // A term needs term dates: the error says where they are set.
    let (ok, _, err) = report(
        &dir,
        &[
            "--period",
            "term",
            "--audience",
            "governors",
            "--format",
            "html",
        ],
        &out.join("term.html"),
    );
    assert!(!ok, "no terms are set");
    assert!(
        err.contains("settings set --file") && err.contains("Settings page"),
        "{err}"
    );

    // Once the school enters its terms and licences (with the settings command), the term's
    // report reconciles them: one laptop has gimp, for which no licence was bought.
    let today = chrono::Utc::now().date_naive();
    let settings = tmp.path().join("settings.json");
    std::fs::write(
        &settings,
        json!({"school_name": "Hillside Primary",
               "terms": [{"name": "This term", "start": (today - chrono::Duration::days(20)).to_string(),
                          "end": (today + chrono::Duration::days(20)).to_string()}],
               "licences": [{"product": "gimp", "count": 0}, {"product": "libreoffice", "count": 30}]})
        .to_string(),
    )
    .unwrap();
    let (ok, o, e) = run(Command::new(bin("caretaker-collector"))
        .args(["settings", "set", "--data-dir"])
        .arg(&dir)
        .arg("--file")
        .arg(&settings));
    assert!(ok, "settings set: {o}{e}");
    let term = out.join("term.pdf");
    let (ok, o, e) = report(
        &dir,
        &[
            "--period",
            "term",
            "--audience",
            "governors",
            "--format",
            "pdf",
        ],
        &term,
    );
    assert!(ok, "{o}{e}");
    let term_text = pdftotext(&term);
    pdftoppm(&term, "term");
    assert!(
        term_text.contains("Monitoring report: This term"),
        "{term_text}"
    );
    assert!(term_text.contains("Hillside Primary"), "{term_text}");
    let gimp = term_text
        .lines()
        .find(|l| l.contains("gimp"))
        .expect("a gimp line");
    assert!(gimp.contains("Over by 1"), "{gimp}");
    let lo = term_text
        .lines()
        .find(|l| l.contains("libreoffice"))
        .expect("a libreoffice line");
    assert!(lo.contains("30 spare"), "{lo}");
    for name in [PUPIL, HOST, SERIAL] {
        assert!(
            !term_text.contains(name),
            "the term's governors' PDF names {name}"
        );
    }

    // The PDF is a real PDF whose text holds the figures.
    let gov_pdf = out.join("governors.pdf");
    assert!(std::fs::read(&gov_pdf).unwrap().starts_with(b"%PDF"));
    let text = pdftotext(&gov_pdf);
    assert!(text.contains("Monitoring report: Week of"), "{text}");
    assert_eq!(
        figure(&text, "Pupils' sticks refused by the policy"),
        "3",
        "{text}"
    );
    assert_eq!(figure(&text, "Found infected"), "0");
    assert!(
        text.lines().any(|l| l.contains("Safeguarding")
            && l.contains("USB")
            && l.split_whitespace().any(|w| w == "3")),
        "one USB incident of three events:\n{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("Safeguarding") && l.contains("Software")),
        "{text}"
    );
    // The laptop was enrolled today: there is nothing earlier to compare with, and the report
    // says so rather than showing a rise from zero.
    assert!(text.contains("no earlier figures"), "{text}");
    assert!(
        text.contains("Technical"),
        "the lock that cannot be enforced: {text}"
    );
    let pages = pdftoppm(&gov_pdf, "governors");
    assert!(!pages.is_empty(), "pdftoppm drew no page");
    let dsl_pdf = out.join("dsl.pdf");
    let dsl_text = pdftotext(&dsl_pdf);
    pdftoppm(&dsl_pdf, "dsl");

    // No governors' format names the pupil, the laptop or the stick; the DSL's do.
    for (what, body) in [
        ("HTML", all_text(&out.join("governors.html"))),
        ("PDF text", text.clone()),
        ("PDF bytes", all_text(&gov_pdf)),
        ("CSV", all_text(&out.join("governors-csv"))),
    ] {
        for name in [PUPIL, HOST, SERIAL] {
            assert!(!body.contains(name), "the governors' {what} names {name}");
        }
    }
    for (what, body) in [
        ("HTML", all_text(&out.join("dsl.html"))),
        ("PDF text", dsl_text),
        ("CSV", all_text(&out.join("dsl-csv"))),
    ] {
        for name in [PUPIL, HOST] {
            assert!(body.contains(name), "the DSL's {what} lacks {name}");
        }
    }

    // One CSV per table; the incidents table has the USB incident with its three events.
    let incidents = std::fs::read_to_string(out.join("governors-csv/incidents.csv")).unwrap();
    assert!(
        incidents
            .lines()
            .any(|l| l.starts_with("Safeguarding,USB devices,1,1,3,")),
        "{incidents}"
    );
    assert!(out.join("dsl-csv/safeguarding_incidents.csv").is_file());
    assert!(
        !out.join("governors-csv/safeguarding_incidents.csv")
            .exists()
    );
    let html = all_text(&out.join("governors.html"));
    assert!(
        html.contains("<svg") && !html.contains("<script"),
        "inline SVG, no script"
    );

    // The dashboard: a governor gets the governors' version whatever the address asks for;
    // the DSL may choose the named one. Downloads go through the same role check.
    let base = format!("https://127.0.0.1:{}", collector.web.port());
    let gov_password = collector.add_user("governor", "chair.of.governors");
    let dsl_password = collector.add_user("dsl", "dsl.lead");
    let api = collector.api();
    let wait = std::time::Duration::from_secs(10);
    let b = Browser::start();
    b.sign_in(&base, "chair.of.governors", &gov_password);
    b.wait_for_text("h1", "Monitoring report", wait);
    b.goto(&format!("{base}/report?period=week&audience=dsl"));
    b.wait_for_text("h1", "Monitoring report: Week of", wait);
    let page = b.page_source();
    assert!(page.contains("Counts only"), "{page}");
    for name in [PUPIL, HOST, SERIAL] {
        assert!(!page.contains(name), "the governor's page names {name}");
    }
    b.screenshot("report-dashboard-governor");
    let cookie = b.session_cookie();
    let q = "/report/download?period=week&audience=dsl";
    let (status, pdf) = api.get_with_cookie(&format!("{q}&format=pdf"), &cookie);
    assert!(status == 200 && pdf.starts_with("%PDF"), "{status}");
    let (status, csv) = api.get_with_cookie(&format!("{q}&format=csv&table=incidents"), &cookie);
    assert_eq!(status, 200);
    assert!(
        csv.contains("Safeguarding,USB devices") && !csv.contains(PUPIL),
        "{csv}"
    );
    let (status, _) = api.get_with_cookie(
        &format!("{q}&format=csv&table=safeguarding_incidents"),
        &cookie,
    );
    assert_eq!(status, 404, "the governors' version has no named table");
    b.sign_out();
    b.sign_in(&base, "dsl.lead", &dsl_password);
    b.wait_for_text("h1", "Incidents", wait);
    b.goto(&format!("{base}/report?period=week&audience=dsl"));
    b.wait_for_text("h1", "Monitoring report: Week of", wait);
    let page = b.page_source();
    assert!(
        page.contains(PUPIL) && page.contains(HOST),
        "the DSL's page names them"
    );
    b.screenshot("report-dashboard-dsl");
    let (status, csv) = api.get_with_cookie(
        &format!("{q}&format=csv&table=safeguarding_incidents"),
        &b.session_cookie(),
    );
    assert_eq!(status, 200);
    assert!(csv.contains(PUPIL) && csv.contains(HOST), "{csv}");
    b.close();
    // Opening the named version and every download are in the audit log.
    let (status, audit) = api.get("/api/v1/audit");
    assert_eq!(status, 200);
    let logged = |actor: &str, action: &str| {
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"].as_str().unwrap_or("").contains(actor) && e["action"] == action)
    };
    assert!(logged("dsl.lead", "report_viewed"), "{audit}");
    assert!(logged("chair.of.governors", "report_downloaded"), "{audit}");

    // With the collector stopped, the CLI opens the store itself and finds the same figures.
    collector.stop();
    let offline = out.join("offline.pdf");
    report_ok(&dir, "governors", "pdf", &offline);
    let offline_text = pdftotext(&offline);
    assert_eq!(
        figure(&offline_text, "Pupils' sticks refused by the policy"),
        "3"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("governors-csv/incidents.csv")).unwrap(),
        {
            report_ok(&dir, "governors", "csv", &out.join("offline-csv"));
            std::fs::read_to_string(out.join("offline-csv/incidents.csv")).unwrap()
        },
        "the same tables from the store as from the running collector"
    );
}
