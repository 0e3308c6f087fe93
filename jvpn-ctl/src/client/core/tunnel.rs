//! The tunnel's fast path, without allocation: DATA is opened in place in the
//! shell's receive buffer and TUN packets are sealed into the shell's send slots
//! (caller-owned buffers, as boringtun does). Everything off the fast path — control
//! messages, a packet larger than the tunnel MTU, no session — goes through
//! [`Core::step`] as before.

use std::ops::Range;

use super::*;

/// What [`Core::open_in_place`] made of a datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Opened {
    /// DATA of this session: write `data[range]` (the inner packet) to the TUN.
    Tun(Range<usize>),
    /// DATA that failed authentication, is a replay, or is for no session: counted.
    Dropped,
    /// Not DATA: give it to [`Core::step`] as [`Input::Datagram`].
    NotData,
}

impl Core {
    /// Opens a datagram received on transport `t` from `from` in place, if it is
    /// DATA.
    pub fn open_in_place(
        &mut self,
        t: usize,
        from: SocketAddr,
        data: &mut [u8],
        now_ms: u64,
    ) -> Opened {
        if data.get(1) != Some(&msg_type::DATA) {
            return Opened::NotData;
        }
        let Some(a) = self.links.get(t).and_then(|l| l.addr_index(from)) else {
            return Opened::Dropped;
        };
        match self.open_data(t, a, data, now_ms) {
            Some(r) => Opened::Tun(r),
            None => Opened::Dropped,
        }
    }

    /// Authenticates DATA from transport `t`'s address `a` in place and checks it
    /// against the session and the replay window; the inner packet's range.
    pub(super) fn open_data(
        &mut self,
        t: usize,
        a: usize,
        data: &mut [u8],
        now_ms: u64,
    ) -> Option<Range<usize>> {
        let Phase::Up(s) = &mut self.phase else {
            return None;
        };
        let base = data.as_ptr() as usize;
        let Ok((sid, ctr, inner)) = proto::data::open(&s.x2c, data) else {
            self.counters.rx_bad += 1;
            return None;
        };
        if sid != s.id {
            self.counters.rx_bad += 1;
            return None;
        }
        if !s.rx_window.update(ctr) {
            self.counters.rx_replayed += 1;
            return None;
        }
        let start = inner.as_ptr() as usize - base;
        let range = start..start + inner.len();
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += inner.len() as u64;
        self.heard(t, a, now_ms);
        Some(range)
    }

    /// Seals `pkt`, read from the TUN, into `out` for the binding and says where it
    /// goes: (transport, gateway address). `None`: not the fast case (no session, or
    /// larger than the tunnel MTU, or not IP): give it to [`Core::step`] as
    /// [`Input::Tun`], which fragments, answers or drops it.
    pub fn seal_into(&mut self, pkt: &[u8], out: &mut Vec<u8>) -> Option<(usize, SocketAddr)> {
        let Phase::Up(s) = &mut self.phase else {
            return None;
        };
        if icmp::classify(pkt, s.tun_mtu) != icmp::Verdict::Fits {
            return None;
        }
        self.seal_for_binding(pkt, out)
    }

    /// Seals `pkt` into `out` with the session's next counter, for the binding:
    /// always over the binding, since a packet from any other transport would be
    /// dropped by the relay, and nothing else may carry tunnel traffic.
    pub(super) fn seal_for_binding(
        &mut self,
        pkt: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<(usize, SocketAddr)> {
        let Phase::Up(s) = &mut self.phase else {
            return None;
        };
        s.data_ctr += 1;
        proto::data::seal(&s.c2x, s.id, s.data_ctr, pkt, out);
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += pkt.len() as u64;
        Some((s.bound, self.links[s.bound].gateway()))
    }
}
