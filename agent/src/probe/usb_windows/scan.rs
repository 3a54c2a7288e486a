//! Scanning a USB stick on Windows, the pure parts: which drive letter Windows gave the stick
//! (from `MountedDevices`, whose `\DosDevices\E:` values name the volume's device path, which
//! holds the stick's serial), and what Defender's command-line scanner
//! (`MpCmdRun -Scan -ScanType 3 -File E:\ -DisableRemediation`) answered.

/// Where Windows remembers which volume has which drive letter.
pub const MOUNTED_DEVICES: &str = r"SYSTEM\MountedDevices";

/// The drive letters (`E:`) whose volume is on the USB storage device with this serial.
/// `MountedDevices` also remembers sticks that are gone, so the caller checks the drive exists.
pub fn letters_of(values: &[(String, Vec<u8>)], serial: &str) -> Vec<String> {
    let needle = format!("#{}&", serial.to_ascii_uppercase());
    let mut out: Vec<String> = values
        .iter()
        .filter_map(|(name, data)| {
            let letter = name.strip_prefix(r"\DosDevices\")?;
            let valid = letter.len() == 2
                && letter.ends_with(':')
                && letter.as_bytes()[0].is_ascii_alphabetic();
            let path = utf16le(data)?.to_ascii_uppercase();
            (valid && path.contains("USBSTOR#") && path.contains(&needle))
                .then(|| letter.to_ascii_uppercase())
        })
        .collect();
    out.sort();
    out
}

/// A device path stored as UTF-16LE; `None` for the 12-byte disk signatures of fixed disks.
fn utf16le(data: &[u8]) -> Option<String> {
    if data.len() < 8 || data.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// What a scan came to, in the words `media.scanned` uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Clean,
    /// The threat names Defender gave (never file names).
    Infected(Vec<String>),
    /// Why the scan did not finish or could not be read.
    Incomplete(String),
}

impl Outcome {
    pub fn result(&self) -> &'static str {
        match self {
            Outcome::Clean => "clean",
            Outcome::Infected(_) => "infected",
            Outcome::Incomplete(_) => "incomplete",
        }
    }
}

/// MpCmdRun's answer: exit code 0 is no threat, 2 is threats found (their names on
/// `Threat : …` lines); anything else is a scan that did not complete.
pub fn outcome(exit_code: Option<i32>, stdout: &str) -> Outcome {
    match exit_code {
        Some(0) => Outcome::Clean,
        Some(2) => {
            let mut names: Vec<String> = stdout
                .lines()
                .filter_map(|l| {
                    let (key, value) = l.split_once(':')?;
                    (key.trim() == "Threat").then(|| value.trim().to_owned())
                })
                .filter(|n| !n.is_empty())
                .collect();
            names.sort();
            names.dedup();
            if names.is_empty() {
                names.push("unnamed threat".into());
            }
            Outcome::Infected(names)
        }
        Some(code) => Outcome::Incomplete(format!(
            "MpCmdRun ended with code {code}: {}",
            stdout
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
        )),
        None => Outcome::Incomplete("MpCmdRun was stopped".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    #[test]
    fn the_stick_s_letter_is_found_by_its_serial() {
        let values = vec![
            // A fixed disk: 4-byte signature and 8-byte offset.
            (
                r"\DosDevices\C:".to_string(),
                vec![0x12, 0x34, 0x56, 0x78, 0, 0, 0x10, 0, 0, 0, 0, 0],
            ),
            (
                r"\DosDevices\E:".to_string(),
                utf16(
                    r"_??_USBSTOR#Disk&Ven_SanDisk&Prod_Cruzer_Blade&Rev_1.00#4C530001230515115343&0#{53f56307-b6bf-11d0-94f2-00a0c91efb8b}",
                ),
            ),
            (
                r"\DosDevices\F:".to_string(),
                utf16(
                    r"_??_USBSTOR#Disk&Ven_Kingston&Prod_DT&Rev_PMAP#60A44C413C2BF1B0A9BA0049&0#{53f56307-b6bf-11d0-94f2-00a0c91efb8b}",
                ),
            ),
            (
                r"\??\Volume{1c2d3e4f-0000-0000-0000-100000000000}".to_string(),
                utf16(
                    r"_??_USBSTOR#Disk&Ven_SanDisk&Prod_Cruzer_Blade&Rev_1.00#4C530001230515115343&0#{53f56307-b6bf-11d0-94f2-00a0c91efb8b}",
                ),
            ),
        ];
        assert_eq!(letters_of(&values, "4c530001230515115343"), ["E:"]);
        assert_eq!(letters_of(&values, "60A44C413C2BF1B0A9BA0049"), ["F:"]);
        assert!(
            letters_of(&values, "4C53").is_empty(),
            "a serial's prefix is not the serial"
        );
    }

    #[test]
    fn mpcmdrun_s_exit_code_and_threat_lines() {
        assert_eq!(
            outcome(Some(0), "Scan starting...\r\nScan finished.\r\n"),
            Outcome::Clean
        );
        // As MpCmdRun prints it with -DisableRemediation (modelled on its documented output).
        let found = "Scan starting...\r\nScan finished.\r\nScanning E:\\ found 1 threats.\r\n\r\n\
            <===========================LIST OF DETECTED THREATS==========================>\r\n\
            ----------------------------- Threat information ------------------------------\r\n\
            Threat                  : Virus:DOS/EICAR_Test_File\r\n\
            Resources               : 1 total\r\n    file                : E:\\homework\\eicar.com\r\n";
        assert_eq!(
            outcome(Some(2), found),
            Outcome::Infected(vec!["Virus:DOS/EICAR_Test_File".into()])
        );
        assert_eq!(
            outcome(Some(2), "found threats\r\n"),
            Outcome::Infected(vec!["unnamed threat".into()])
        );
        assert_eq!(
            outcome(
                Some(-2147024894),
                "CmdTool: Failed with hr = 0x80070002.\r\n"
            ),
            Outcome::Incomplete(
                "MpCmdRun ended with code -2147024894: CmdTool: Failed with hr = 0x80070002."
                    .into()
            )
        );
        assert_eq!(outcome(None, "").result(), "incomplete");
    }
}
