//! Questions put to Windows PowerShell 5.1 (present on every Windows 10 and 11), answered as
//! JSON: the antivirus probe's two reads, Defender's `Get-MpComputerStatus` and Security
//! Center's `AntiVirusProduct` list. The commands are the ones the recordings in
//! `probe/antivirus/testdata` were made with, so the interpreters read exactly this output.
//!
//! Wine's `powershell.exe` is a stub that prints nothing and succeeds: an empty answer is an
//! error here, so under Wine the probe says it could not ask, never that nothing is installed.

use std::time::Duration;

use tokio::process::Command;

/// Defender's own status (one object).
pub const DEFENDER_STATUS: &str = "Get-MpComputerStatus | ConvertTo-Json";
/// Every product registered with Security Center, as an array even when there are none (`[]`)
/// or one, so an empty answer always means PowerShell did not answer.
pub const SECURITY_CENTER_PRODUCTS: &str = "ConvertTo-Json -InputObject @(Get-CimInstance -Namespace root/SecurityCenter2 -ClassName AntiVirusProduct)";

/// `CREATE_NO_WINDOW`: no console flashes up on the pupil's screen.
const CREATE_NO_WINDOW: u32 = 0x0800_0000;

#[derive(Debug, thiserror::Error)]
pub enum PowerShellError {
    #[error("cannot run {path}: {source}")]
    Spawn {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` did not answer within {} s", .timeout.as_secs())]
    Timeout {
        command: &'static str,
        timeout: Duration,
    },
    #[error("`{command}` failed ({status}): {said}")]
    Failed {
        command: &'static str,
        status: std::process::ExitStatus,
        said: String,
    },
    #[error("`{command}` printed nothing")]
    Empty { command: &'static str },
}

/// Runs `command` in Windows PowerShell and returns what it printed (UTF-8), killing it if it
/// has not finished within `timeout`.
pub async fn json(command: &'static str, timeout: Duration) -> Result<String, PowerShellError> {
    let exe = super::system32().join(r"WindowsPowerShell\v1.0\powershell.exe");
    let child = Command::new(&exe)
        .args(arguments(command))
        .stdin(std::process::Stdio::null())
        .creation_flags(CREATE_NO_WINDOW)
        .kill_on_drop(true)
        .output();
    let out = match tokio::time::timeout(timeout, child).await {
        Err(_) => return Err(PowerShellError::Timeout { command, timeout }),
        Ok(Err(source)) => {
            return Err(PowerShellError::Spawn {
                path: exe.display().to_string(),
                source,
            });
        }
        Ok(Ok(out)) => out,
    };
    answer(command, out.status, &out.stdout, &out.stderr)
}

/// PowerShell's command line: no profile, no prompts, and UTF-8 out (5.1 otherwise writes a
/// redirected stdout in the OEM code page, which garbles product names).
pub fn arguments(command: &str) -> [String; 4] {
    [
        "-NoProfile".into(),
        "-NonInteractive".into(),
        "-Command".into(),
        format!("[Console]::OutputEncoding = [System.Text.Encoding]::UTF8; {command}"),
    ]
}

/// What a finished PowerShell said: its stdout, or why it is no answer.
fn answer(
    command: &'static str,
    status: std::process::ExitStatus,
    stdout: &[u8],
    stderr: &[u8],
) -> Result<String, PowerShellError> {
    if !status.success() {
        let said = String::from_utf8_lossy(stderr);
        let said = said.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(PowerShellError::Failed {
            command,
            status,
            said: said.trim().to_string(),
        });
    }
    let text = String::from_utf8_lossy(stdout);
    let text = text.trim_start_matches('\u{feff}').trim();
    if text.is_empty() {
        return Err(PowerShellError::Empty { command });
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::windows::process::ExitStatusExt;

    #[test]
    fn arguments_set_utf8_before_the_command() {
        let args = arguments(DEFENDER_STATUS);
        assert_eq!(args[..3], ["-NoProfile", "-NonInteractive", "-Command"]);
        assert!(args[3].starts_with("[Console]::OutputEncoding"));
        assert!(args[3].ends_with("; Get-MpComputerStatus | ConvertTo-Json"));
    }

    #[test]
    fn an_answer_is_trimmed_and_an_empty_one_is_an_error() {
        let ok = ExitStatusExt::from_raw(0);
        assert_eq!(
            answer(DEFENDER_STATUS, ok, b"\xef\xbb\xbf{\"a\": 1}\r\n", b"").unwrap(),
            "{\"a\": 1}"
        );
        let e = answer(DEFENDER_STATUS, ok, b"\r\n", b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`Get-MpComputerStatus | ConvertTo-Json` printed nothing"
        );
        let failed = ExitStatusExt::from_raw(1);
        let e = answer(
            DEFENDER_STATUS,
            failed,
            b"",
            b"\r\nGet-MpComputerStatus : The term is not recognized\r\nAt line:1\r\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .ends_with(": Get-MpComputerStatus : The term is not recognized"),
            "{e}"
        );
    }

    /// Under Wine this runs Wine's stub, which prints nothing; on Windows, real PowerShell.
    #[tokio::test]
    async fn asks_the_real_powershell() {
        match json(
            "ConvertTo-Json -InputObject @(1, 2)",
            Duration::from_secs(60),
        )
        .await
        {
            Ok(text) => assert_eq!(
                text.split_whitespace().collect::<String>(),
                "[1,2]",
                "Windows PowerShell"
            ),
            Err(PowerShellError::Empty { .. }) => {} // Wine's stub
            Err(e) => panic!("{e}"),
        }
    }
}
