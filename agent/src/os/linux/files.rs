//! Bounded reads of files other programs keep: the head of a database or a disk, the tail of
//! a log. Thin: what the bytes mean is the caller's.

use std::io::SeekFrom;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// The first `len` bytes of a file or device (fewer if it is shorter); `Ok(None)` if it does
/// not exist.
pub async fn read_head(path: &Path, len: usize) -> std::io::Result<Option<Vec<u8>>> {
    let file = match tokio::fs::File::open(path).await {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut head = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut head).await?;
    Ok(Some(head))
}

/// The last `max` bytes of a text file, from the first whole line; `None` if unreadable.
pub async fn read_tail(path: &Path, max: u64) -> Option<String> {
    let mut file = tokio::fs::File::open(path).await.ok()?;
    let len = file.metadata().await.ok()?.len();
    let start = len.saturating_sub(max);
    file.seek(SeekFrom::Start(start)).await.ok()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).await.ok()?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    Some(if start > 0 {
        text.split_once('\n')
            .map_or(String::new(), |(_, rest)| rest.to_owned())
    } else {
        text
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn read_head_stops_at_the_length_and_knows_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::write(&path, [7u8; 100]).unwrap();
        assert_eq!(read_head(&path, 64).await.unwrap(), Some(vec![7u8; 64]));
        assert_eq!(read_head(&path, 4096).await.unwrap().unwrap().len(), 100);
        assert_eq!(
            read_head(&dir.path().join("absent"), 64).await.unwrap(),
            None
        );
        assert!(
            read_head(dir.path(), 64).await.is_err(),
            "a folder is not read"
        );
    }

    #[tokio::test]
    async fn read_tail_starts_at_a_whole_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(
            read_tail(&path, 1024).await.unwrap(),
            "first line\nsecond line\nthird\n"
        );
        assert_eq!(read_tail(&path, 15).await.unwrap(), "third\n");
        assert_eq!(read_tail(&dir.path().join("absent"), 10).await, None);
    }
}
