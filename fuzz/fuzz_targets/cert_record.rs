#![no_main]
//! See `certauto_core::__fuzz::targets::cert_record` for what this checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| certauto_core::__fuzz::targets::cert_record(data));
