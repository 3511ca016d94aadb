#![no_main]
//! See `certauto_core::__fuzz::targets::retry_after` for what this checks.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| certauto_core::__fuzz::targets::retry_after(data));
