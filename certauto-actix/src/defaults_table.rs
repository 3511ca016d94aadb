//! Checks this crate's rows of the table of defaults
//! (`certauto-core/src/defaults.md`, in certauto-core's docs and the README)
//! against the constants this crate's code reads; certauto-core's own test
//! checks the rest and leaves these rows to this one.

#[test]
fn every_stated_default_is_the_constant_the_code_uses() {
    certauto_core::__defaults::check_rows(
        "certauto_actix::",
        &[(
            "certauto_actix::serve::MAX_WORKERS",
            crate::serve::MAX_WORKERS.to_string(),
        )],
    );
}
