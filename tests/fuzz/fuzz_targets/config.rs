//! The three configuration files (gateway, client agent, exit) from arbitrary text.
//! Invariant: nothing panics; every refusal names a key or a line; a gateway
//! configuration that is accepted prints (`--print-config`) to text that parses back
//! to the same configuration.

#![no_main]

use jvpn_ctl::{client::ClientConfig, exit::ConfigFile, gateway::GatewayConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match GatewayConfig::parse(text) {
        Ok(c) => {
            if c.validate().is_ok() {
                let printed = toml::to_string(&c).expect("an accepted configuration prints");
                let back = GatewayConfig::parse(&printed).expect("the printed configuration parses");
                assert_eq!(back, c, "printed:\n{printed}");
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Ok(c) = ClientConfig::parse(text) {
        let _ = c.validate();
    }
    if let Ok(c) = ConfigFile::parse(text) {
        let _ = c.resolve();
    }
});
