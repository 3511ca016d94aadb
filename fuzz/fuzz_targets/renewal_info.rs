#![no_main]
//! See `certauto_core::__fuzz::targets::renewal_info` for what this checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| certauto_core::__fuzz::targets::renewal_info(data));
