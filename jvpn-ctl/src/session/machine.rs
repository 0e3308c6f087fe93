pub fn step(s: &super::Session, _e: &super::Event, _p: &super::Policy, _now_ms: u64) -> super::Step { super::Step { session: s.clone(), actions: vec![], reason: None } }
