#![no_main]
//! See `certauto_core::__fuzz::targets::ocsp_response` for what this checks.

use libfuzzer_sys::fuzz_target;

const LEAF_DER: &[u8] = include_bytes!("../fixtures/leaf.der");
const CA_DER: &[u8] = include_bytes!("../fixtures/ca.der");

fuzz_target!(|data: &[u8]| certauto_core::__fuzz::targets::ocsp_response(data, LEAF_DER, CA_DER));
