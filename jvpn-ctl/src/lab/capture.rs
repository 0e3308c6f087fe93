//! Packet capture and injection on a lab interface (AF_PACKET), to check from the
//! outside what the relay lets through: frames captured on a client link can be
//! re-sent on it after the session moved away, and a capture on the exit's link
//! shows whether any of them came out of the gateway.

use std::{
    io::{Error, Result},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use jvpn_common::wire::{VERSION, msg_type};

use super::netns::Netns;

/// One captured jvpn frame (any message type).
#[derive(Clone, Debug)]
pub struct Frame {
    pub at: Instant,
    /// Sent by this host (rather than received).
    pub outgoing: bool,
    pub bytes: Vec<u8>,
}

impl Frame {
    pub fn payload(&self) -> Option<&[u8]> {
        udp_payload(&self.bytes)
    }

    pub fn msg_type(&self) -> Option<u8> {
        self.payload().and_then(|p| p.get(1).copied())
    }

    pub fn is_data(&self) -> bool {
        self.msg_type() == Some(msg_type::DATA)
    }
}

/// The UDP payload of an Ethernet/IPv4-or-IPv6/UDP frame.
pub fn udp_payload(f: &[u8]) -> Option<&[u8]> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let l4 = match ethertype {
        0x0800 => {
            let ihl = usize::from(f.get(14)? & 0x0f) * 4;
            (*f.get(23)? == 17).then_some(14 + ihl)?
        }
        0x86dd => (*f.get(20)? == 17).then_some(14 + 40)?,
        _ => return None,
    };
    let len = usize::from(u16::from_be_bytes([*f.get(l4 + 4)?, *f.get(l4 + 5)?]));
    f.get(l4 + 8..l4 + len.max(8))
}

fn is_jvpn(f: &[u8]) -> bool {
    udp_payload(f).is_some_and(|p| p.len() > 2 && p[0] == VERSION)
}

fn packet_socket(ns: &Netns, iface: &str) -> Result<OwnedFd> {
    let ifindex = ns.ifindex(iface)?;
    ns.run(|| {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket creation; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
        if fd < 0 {
            return Err(Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        // SAFETY: binding with a correctly sized sockaddr_ll.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        // SAFETY: setting a timeval option with its size.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(fd)
    })
}

/// Records every jvpn frame seen on an interface until dropped.
pub struct Capture {
    stop: Arc<AtomicBool>,
    frames: Arc<Mutex<Vec<Frame>>>,
    thread: Option<JoinHandle<()>>,
}

impl Capture {
    pub fn start(ns: &Netns, iface: &str) -> Result<Self> {
        let fd = packet_socket(ns, iface)?;
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (s, fr) = (stop.clone(), frames.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: zeroed sockaddr_ll for recvfrom to fill.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: buf and sll are valid for the sizes given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut sll).cast(),
                        &mut len,
                    )
                };
                let Ok(n) = usize::try_from(n) else {
                    continue;
                };
                if is_jvpn(&buf[..n]) {
                    let mut g = fr.lock().unwrap_or_else(|e| e.into_inner());
                    if g.len() < 1_000_000 {
                        g.push(Frame {
                            at: Instant::now(),
                            outgoing: sll.sll_pkttype == libc::PACKET_OUTGOING,
                            bytes: buf[..n].to_vec(),
                        });
                    }
                }
            }
        });
        Ok(Self {
            stop,
            frames,
            thread: Some(thread),
        })
    }

    pub fn frames(&self) -> Vec<Frame> {
        self.frames
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends raw Ethernet frames out of `iface`, as if the host's stack had sent them.
pub fn inject(ns: &Netns, iface: &str, frames: &[Vec<u8>], gap: Duration) -> Result<()> {
    let fd = packet_socket(ns, iface)?;
    for f in frames {
        // SAFETY: sending a valid buffer on a bound packet socket.
        let n = unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
        if n < 0 {
            return Err(Error::last_os_error());
        }
        std::thread::sleep(gap);
    }
    Ok(())
}

/// How many of `sent` (frames injected after `since`) show up in `seen` at or after
/// `since`, compared by UDP payload (the relay rewrites only the outer headers).
pub fn delivered(sent: &[Vec<u8>], seen: &[Frame], since: Instant) -> usize {
    let wanted: std::collections::HashSet<&[u8]> =
        sent.iter().filter_map(|f| udp_payload(f)).collect();
    seen.iter()
        .filter(|f| f.at >= since)
        .filter_map(|f| f.payload())
        .filter(|p| wanted.contains(p))
        .count()
}
