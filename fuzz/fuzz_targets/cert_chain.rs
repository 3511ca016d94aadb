#![no_main]
//! See `certauto_core::__fuzz::targets::cert_chain` for what this checks.

use libfuzzer_sys::fuzz_target;

const LEAF_KEY: &str = include_str!("../fixtures/leaf.key");
const CA_DER: &[u8] = include_bytes!("../fixtures/ca.der");

fuzz_target!(|data: &[u8]| certauto_core::__fuzz::targets::cert_chain(data, LEAF_KEY, CA_DER));
