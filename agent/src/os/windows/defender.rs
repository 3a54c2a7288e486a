//! Defender's command-line scanner, run on a whole drive: `MpCmdRun.exe -Scan -ScanType 3
//! -File E:\ -DisableRemediation` (a custom scan of that path that reports without cleaning).
//! Returns its exit code and output for `probe::usb::scan` to read.

use std::path::PathBuf;
use std::time::Duration;

use tokio::process::Command;

/// `CREATE_NO_WINDOW`: no console on the pupil's screen.
const CREATE_NO_WINDOW: u32 = 0x0800_0000;

/// `%ProgramFiles%\Windows Defender\MpCmdRun.exe`.
pub fn mpcmdrun() -> PathBuf {
    std::env::var_os("ProgramFiles")
        .filter(|p| !p.is_empty())
        .map_or_else(|| PathBuf::from(r"C:\Program Files"), PathBuf::from)
        .join(r"Windows Defender\MpCmdRun.exe")
}

/// Scans `drive` (`E:`); `Err` if the scanner could not be run or did not finish in time.
pub async fn scan_drive(drive: &str, timeout: Duration) -> Result<(Option<i32>, String), String> {
    let exe = mpcmdrun();
    let run = Command::new(&exe)
        .args(["-Scan", "-ScanType", "3", "-File"])
        .arg(format!(r"{drive}\"))
        .arg("-DisableRemediation")
        .stdin(std::process::Stdio::null())
        .creation_flags(CREATE_NO_WINDOW)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(format!(
            "the scan did not finish within {} min",
            timeout.as_secs() / 60
        )),
        Ok(Err(e)) => Err(format!("cannot run {}: {e}", exe.display())),
        Ok(Ok(out)) => Ok((
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )),
    }
}
