//! Every decoder of a datagram a gateway or client receives before any key is
//! checked: session control messages, HELLO, WELCOME, CONFIRM, ESTABLISHED, TIME,
//! COOKIE, the DATA header. Invariant: nothing panics, and a control message that
//! decodes is canonical: encoded again (under a test key) it is the same bytes but
//! for its MAC, and that encoding verifies.

#![no_main]

use jvpn_ctl::proto::{self, Unverified};
use libfuzzer_sys::fuzz_target;
use ring::hmac;

use jvpn_ctl::proto::control::MAC_LEN;

fuzz_target!(|data: &[u8]| {
    let _ = proto::Hello::decode(data);
    let _ = proto::Welcome::decode(data);
    let _ = proto::Confirm::decode(data);
    let _ = proto::Established::decode(data);
    let _ = proto::Time::decode(data);
    let _ = proto::Cookie::decode(data);
    let _ = proto::data::peek_session(data);
    let _ = jvpn_common::wire::WireHeader::parse(data);
    let Ok(u) = Unverified::decode(data) else {
        return;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]);
    let again = u.msg().encode(&key).expect("a decoded message encodes");
    assert_eq!(again.len(), data.len(), "{:?}", u.msg());
    let mac_len = MAC_LEN;
    assert_eq!(
        again[..again.len() - mac_len],
        data[..data.len() - mac_len],
        "not canonical: {:?}",
        u.msg()
    );
    let back = Unverified::decode(&again).expect("its encoding decodes");
    assert_eq!(back.msg(), u.msg());
    back.verify(&key).expect("its encoding verifies");
});
