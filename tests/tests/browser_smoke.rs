//! The browser rig against a real collector: headless Chromium over HTTPS with the school CA's certificate, and screenshots.

use std::time::Duration;

use caretaker_tests::Collector;
use caretaker_tests::browser_rig::Browser;

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Checks `png` is a PNG (signature, then the IHDR chunk) and returns its (width, height).
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.len() > 24, "{} bytes is no PNG", png.len());
    assert_eq!(png[..8], PNG_SIGNATURE, "not a PNG signature");
    assert_eq!(&png[12..16], b"IHDR", "the first chunk is not IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    (be(&png[16..20]), be(&png[20..24]))
}

#[test]
fn chromium_reaches_the_collector_over_https_and_takes_screenshots() {
    let tmp = tempfile::tempdir().unwrap();
    let collector = Collector::start(&tmp.path().join("collector"));
    let base = format!("https://127.0.0.1:{}", collector.web.port());
    let browser = Browser::start();

    // The certificate is the school CA's, not one Chromium trusts: the page loads only if
    // the rig's acceptInsecureCerts is in force (otherwise Chromium shows its warning page).
    browser.goto(&format!("{base}/healthz"));
    assert_eq!(browser.current_url(), format!("{base}/healthz"));
    assert_eq!(browser.text("body"), "ok");
    assert_eq!(
        browser.wait_for_text("body", "ok", Duration::from_secs(5)),
        "ok"
    );

    browser.goto(&format!("{base}/"));
    assert!(
        browser.page_source().contains("<body"),
        "{}",
        browser.page_source()
    );
    let desktop = browser.screenshot("browser-smoke-home");
    let png = std::fs::read(&desktop).unwrap();
    // Measured with Chromium 156 at this size: a blank page is 4.5 KB, a bare sign-in form
    // 7.5 KB, today's home page 42 KB. Over 5 KB means something was drawn.
    assert!(
        png.len() > 5_000,
        "{} is only {} bytes",
        desktop.display(),
        png.len()
    );
    assert_eq!(png_size(&png).0, 1280, "{}", desktop.display());

    browser.set_window_size(390, 844);
    let phone = browser.screenshot("browser-smoke-home-phone");
    let (width, _) = png_size(&std::fs::read(&phone).unwrap());
    assert_eq!(width, 390, "{}", phone.display());

    browser.close();
}
