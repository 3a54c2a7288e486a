//! Uninstall codes: the collector derives one per device from a secret only it holds; the laptop keeps only a hash, so it can check a code offline without being able to make one.
//!
//! code = the first 60 bits of HMAC-SHA256(secret, "caretaker-uninstall-code/1\0" + device id),
//! written as 12 Crockford base32 characters in groups of four (`7KQ2-M9XD-4HTB`). The laptop
//! stores SHA-256("caretaker-uninstall/1\0" + device id + "\0" + code): salted by the device,
//! so one table of hashes does not serve every laptop. Typing is forgiving: case, spaces and
//! dashes do not matter, and O, I and L are read as 0, 1 and 1.

use sha2::{Digest, Sha256};

/// Crockford's base32: no I, L, O or U, so a code read aloud or off a screen is unambiguous.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Characters in a code (5 bits each: 60 bits).
pub const CODE_LEN: usize = 12;

/// HMAC-SHA256 (RFC 2104); small enough to keep here rather than add a crate.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The device's code as shown to people, e.g. `7KQ2-M9XD-4HTB`.
pub fn derive_code(secret: &[u8], device_id: &str) -> String {
    let mut msg = b"caretaker-uninstall-code/1\0".to_vec();
    msg.extend_from_slice(device_id.as_bytes());
    let mac = hmac_sha256(secret, &msg);
    let bits = u64::from_be_bytes(mac[..8].try_into().expect("8 bytes")) >> 4;
    let mut out = String::with_capacity(CODE_LEN + 2);
    for i in 0..CODE_LEN {
        if i > 0 && i % 4 == 0 {
            out.push('-');
        }
        let v = (bits >> (5 * (CODE_LEN - 1 - i))) & 31;
        out.push(ALPHABET[v as usize] as char);
    }
    out
}

/// A typed code in canonical form (12 characters, no dashes), or `None` if it cannot be one.
pub fn normalise(input: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_LEN);
    for c in input.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' | '\t' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_LEN).then_some(out)
}

/// What the laptop keeps: hex SHA-256 of the device id and the canonical code. `None` if
/// `code` is not a code at all.
pub fn code_hash(device_id: &str, code: &str) -> Option<String> {
    let code = normalise(code)?;
    let mut h = Sha256::new();
    h.update(b"caretaker-uninstall/1\0");
    h.update(device_id.as_bytes());
    h.update(b"\0");
    h.update(code.as_bytes());
    Some(hex_lower(&h.finalize()))
}

/// True if `typed` is this device's code, given the hash the laptop keeps.
pub fn verify(device_id: &str, typed: &str, expected_hash: &str) -> bool {
    let Some(got) = code_hash(device_id, typed) else {
        return false;
    };
    let expected = expected_hash.trim().to_ascii_lowercase();
    // Same length always (64 hex digits) for a well-formed hash; compare every byte anyway.
    got.len() == expected.len()
        && got
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex_lower(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex_lower(&mac),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn codes_are_stable_per_device_and_secret_and_readable() {
        let a = derive_code(b"secret-1", "device-a");
        assert_eq!(a, derive_code(b"secret-1", "device-a"));
        assert_ne!(a, derive_code(b"secret-1", "device-b"));
        assert_ne!(a, derive_code(b"secret-2", "device-a"));
        assert_eq!(a.len(), 14);
        assert_eq!(a.matches('-').count(), 2);
        assert!(
            a.chars()
                .filter(|&c| c != '-')
                .all(|c| ALPHABET.contains(&(c as u8))),
            "{a}"
        );
    }

    #[test]
    fn the_hash_verifies_the_code_however_it_is_typed_and_nothing_else() {
        let code = derive_code(b"k", "dev-1");
        let hash = code_hash("dev-1", &code).unwrap();
        assert_eq!(hash.len(), 64);
        assert!(verify("dev-1", &code, &hash));
        let sloppy = code.to_lowercase().replace('-', " ");
        assert!(verify("dev-1", &sloppy, &hash));
        assert!(verify(
            "dev-1",
            &format!(" {} ", code.replace('-', "")),
            &hash
        ));
        // Another device's code, the right code for another device, junk and nothing.
        assert!(!verify("dev-1", &derive_code(b"k", "dev-2"), &hash));
        assert!(!verify("dev-2", &code, &hash));
        assert!(!verify("dev-1", "", &hash));
        assert!(!verify("dev-1", "ABCD-EFGH-JKM", &hash));
        assert!(!verify("dev-1", "ABCD-EFGH-JKMU", &hash));
        assert!(!verify("dev-1", &code, ""));
    }

    #[test]
    fn look_alike_letters_are_read_as_digits() {
        assert_eq!(normalise("oil0-1111-2222").as_deref(), Some("011011112222"));
        assert_eq!(normalise("ABCD EFGH JKMN").as_deref(), Some("ABCDEFGHJKMN"));
        assert_eq!(normalise("ABCD-EFGH-JKMNP"), None);
        assert_eq!(normalise("ABCD-EFGH-JKMÜ"), None);
    }
}
