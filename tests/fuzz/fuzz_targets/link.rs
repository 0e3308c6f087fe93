//! The gateway ↔ exit link frames (`proto::link`). Three ways in, picked by the first
//! byte: a raw frame opened by a fresh receiver (the checks before the tag); a
//! plaintext body of any type (the body parser, which a forged tag never reaches);
//! and the decoded message sealed and opened by a real pair. Invariants: nothing
//! panics; a body that decodes is canonical (its encoding is the same bytes); a
//! sealed message opens as itself once and is refused as a replay the second time;
//! a frame with one byte changed is refused.

#![no_main]

use jvpn_ctl::proto::{Dir, LinkCrypto, LinkMsg, ProtoError};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [3; 32];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, 1);
        assert!(exit.open_node(rest).is_err(), "a frame nobody sealed opened");
        return;
    }
    let Some((&ty, body)) = rest.split_first() else {
        return;
    };
    let Ok(msg) = LinkMsg::from_body(ty, body) else {
        return;
    };
    assert_eq!(msg.type_code(), ty);
    assert_eq!(msg.body(), body, "not canonical: {msg:?}");
    let node = u16::from(mode >> 1);
    let mut gw = LinkCrypto::new(&KEY, Dir::GatewayToExit, node, 1 << 40);
    let mut exit = LinkCrypto::new(&KEY, Dir::ExitToGateway, 0, 1);
    let frame = gw.seal(&msg);
    let mut tampered = frame.clone();
    let at = usize::from(ty) * 7 % frame.len();
    tampered[at] ^= 1 << (mode % 8);
    assert!(exit.open_node(&tampered).is_err(), "a changed frame opened");
    assert_eq!(exit.open_node(&frame).expect("a sealed frame opens"), (node, msg));
    assert!(matches!(exit.open_node(&frame), Err(ProtoError::Replay(_))));
});
