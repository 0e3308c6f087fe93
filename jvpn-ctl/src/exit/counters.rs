//! What the exit did with every packet and link frame, by outcome: lock-free counters
//! shared with whoever watches (tests, the summary line at shutdown).

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
};

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// Live counters; read them with [`Counters::snapshot`].
        #[derive(Debug, Default)]
        pub struct Counters {
            $($(#[$m])* pub $name: AtomicU64,)*
        }

        /// A copy of [`Counters`] at one moment.
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
        pub struct CountersSnapshot {
            $($(#[$m])* pub $name: u64,)*
        }

        impl Counters {
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl fmt::Display for CountersSnapshot {
            /// `name=value` pairs, space separated, for the summary log line.
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut sep = "";
                $(
                    write!(f, "{sep}{}={}", stringify!($name), self.$name)?;
                    sep = " ";
                )*
                let _ = sep;
                Ok(())
            }
        }
    };
}

counters! {
    /// INSTALLs accepted (new sessions, re-keys and idempotent repeats).
    link_installs,
    /// INSTALLs refused (tunnel address used by another session, outside the pool, or
    /// the exit's own): no ACK.
    link_refused,
    /// INSTALLs and REVOKEs of a superseded owner (an epoch below the session's):
    /// such an INSTALL is refused without an ACK, such a REVOKE acknowledged and
    /// ignored.
    link_stale_epoch,
    /// REVOKEs obeyed (also for sessions already gone; not the stale ones).
    link_revokes,
    /// INSTALLs whose address a session unknown to the gateway held (forgotten).
    link_replaced,
    /// ACKs sent.
    link_acks_sent,
    /// Link frames that failed to authenticate or parse (wrong key, replayed, garbage).
    link_bad_frames,
    /// Authentic link messages the exit does not expect (an ACK sent to it).
    link_unexpected,
    /// DATA from the gateway decrypted and written to the TUN device.
    data_in,
    /// Inner bytes of `data_in`.
    data_in_bytes,
    /// Not a DATA packet (bad header, wrong type, too short).
    data_malformed,
    /// DATA for a session the exit does not have.
    data_unknown_session,
    /// DATA from an address that is not its session's return endpoint: a former
    /// owner's (or anyone's), dropped before decryption.
    data_stale_owner,
    /// DATA whose tag did not verify under the session's k_c2x.
    data_bad_tag,
    /// Authentic DATA with a counter already seen or older than the window.
    data_replay,
    /// Decrypted payload that is not an IPv4/IPv6 packet.
    data_bad_inner,
    /// Inner source address is not the session's tunnel address.
    data_spoofed,
    /// Writes to the TUN device that failed.
    tun_write_errors,
    /// Packets from the TUN device sealed and sent to the gateway.
    data_out,
    /// Inner bytes of `data_out`.
    data_out_bytes,
    /// TUN packets whose destination is no session's tunnel address.
    tun_no_session,
    /// TUN packets to multicast addresses (the kernel's own IPv6 router solicitations
    /// and MLD reports, typically): never tunnelled.
    tun_multicast,
    /// TUN reads that are not IPv4/IPv6 packets.
    tun_bad_packet,
    /// Sessions whose send counter is exhausted (never reused: packets are dropped).
    tun_counter_exhausted,
    /// MTU notices from clients (their tunnel MTU changed).
    data_mtu_notices,
    /// TUN packets too big for their session's tunnel, answered with ICMP "too big"
    /// into the TUN (or dropped where no ICMP error is allowed).
    tun_too_big,
    /// TUN packets too big for their session's tunnel, without DF: sent as fragments.
    tun_fragmented,
    /// UDP sends (DATA or ACK) that failed.
    send_errors,
    /// UDP receives that failed.
    recv_errors,
}

/// Adds one.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

/// Adds `n`.
pub(crate) fn add(c: &AtomicU64, n: usize) {
    c.fetch_add(n as u64, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_and_display() {
        let c = Counters::default();
        bump(&c.data_replay);
        add(&c.data_in_bytes, 10);
        let s = c.snapshot();
        assert_eq!(s.data_replay, 1);
        assert_eq!(s.data_in_bytes, 10);
        let text = s.to_string();
        assert!(text.starts_with("link_installs=0 "), "{text}");
        assert!(text.contains(" data_replay=1 "), "{text}");
    }
}
