//! The kernel uevent netlink socket (NETLINK_KOBJECT_UEVENT, multicast group 1), via rustix: no unsafe here.
use std::io;
use std::os::fd::OwnedFd;

use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType, bind, recvfrom, socket_with};
use tokio::io::unix::AsyncFd;

/// Group 1 carries the kernel's own uevents; group 2 is udev's re-broadcast (different format).
const KERNEL_GROUP: u32 = 1;

/// A bound, non-blocking uevent socket registered with tokio.
pub struct UeventSocket {
    fd: AsyncFd<OwnedFd>,
}

impl UeventSocket {
    /// Opens and binds the socket. Needs no privilege to listen.
    pub fn open() -> io::Result<Self> {
        let fd = socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            Some(netlink::KOBJECT_UEVENT),
        )?;
        // A hub of devices arriving at once produces a burst; a small buffer loses events (ENOBUFS).
        let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 1 << 20);
        bind(&fd, &SocketAddrNetlink::new(0, KERNEL_GROUP))?;
        // tokio 1.54 deprecates the safe `AsyncFd::new` in favour of an `unsafe fn register`
        // whose contract is that the fd stays open and the same while registered. An `OwnedFd`
        // moved into the AsyncFd guarantees exactly that, and the crate forbids unsafe code.
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd)?;
        Ok(Self { fd })
    }

    /// Receives the next datagram sent by the kernel (port id 0) into `buf`; messages from any
    /// other sender are dropped, since a local process could otherwise forge device arrivals.
    /// ENOBUFS (the kernel dropped messages) is returned so the caller can re-enumerate.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| {
                recvfrom(fd.get_ref(), &mut *buf, RecvFlags::empty()).map_err(io::Error::from)
            }) {
                Ok(Ok((n, _, addr))) => {
                    let from_kernel = addr
                        .and_then(|a| SocketAddrNetlink::try_from(a).ok())
                        .is_some_and(|a| a.pid() == 0);
                    if from_kernel {
                        return Ok(n);
                    }
                    tracing::warn!("uevent from a non-kernel sender ignored");
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::usb::parse::parse_uevent;

    /// A real kernel uevent, synthesised by writing "change" to a device's `uevent` file.
    #[tokio::test]
    async fn receives_a_real_kernel_uevent() {
        let s = UeventSocket::open().expect("open uevent socket");
        std::fs::write("/sys/class/net/lo/uevent", "change").expect("needs root and /sys");
        let mut buf = vec![0u8; 8192];
        let found = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                let n = s.recv(&mut buf).await.unwrap();
                if let (Some(ev), _) = parse_uevent(&buf[..n])
                    && ev.action == "change"
                    && ev.devpath.ends_with("/lo")
                {
                    return ev;
                }
            }
        })
        .await
        .expect("the change uevent arrives");
        assert_eq!(found.subsystem, "net");
        assert!(found.seqnum.is_some());
    }
}
